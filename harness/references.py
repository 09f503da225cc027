"""
Exact reference predictors for synthetic data (mixtures of first-order Markov chains over V states).

Every reference scores a window x_0..x_T by the sequential Bayes rule over a finite set of
hypotheses c (the chains of a run's mixture, or just one):

    p(x_t | x_<t) = sum_c post_t(c) q_c(x_t | x_<t),     post_{t+1}(c) ∝ post_t(c) q_c(x_t | x_<t),
    post_1(c) ∝ prior(c) p_c(x_0),                        loss_t = -ln p(x_t | x_<t),  t = 1..T.

They differ only in what a hypothesis knows:

- bayes / oracle: the true chain, q_c(x_t | x_<t) = P_c[x_{t-1}, x_t] and p_c(x_0) its stationary
  distribution. bayes uses the run's mixture (prior = its weights), the oracle the window's own
  chain (prior = [1]).
- learner / learner1: the model class only (first-order chains, a symmetric Dirichlet(a_c) prior on
  every transition row) plus the run's training tokens, summarised by each chain's transition
  counts n_c. Under c the window's own earlier transitions w (x_{s-1} -> x_s, s < t) are evidence
  too, so q_c is the Dirichlet-multinomial posterior predictive

      q_c(x_t | x_<t) = (n_c[i, j] + w[i, j] + a_c) / (n_c[i].sum() + w[i].sum() + V a_c),
                        i = x_{t-1}, j = x_t,

  and p_c(x_0) is the stationary distribution of c's posterior-mean chain (n_c + a_c, rows
  normalised). The product of these q_c over a window is the Dirichlet-multinomial marginal
  likelihood of its transitions, so the rule above is exact Bayes over "which chain, with which
  unknown rows". learner1 is the learner told the window's chain (prior = [1]).
  a_c is fitted per chain by maximum marginal likelihood of the counts (fit_alpha).

With enough counts the learner's q_c tends to P_c and the learner tends to bayes, learner1 to the
oracle; in expectation oracle <= learner1 <= learner (a single window can break the order).

- context: for a chain outside a run's training (unseen), the learner with no counts at all: the
  window's own transitions under the model class's prior (in_context_losses).
"""
import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import gammaln


def _sequential_bayes(posterior, likelihoods):
    """
    The sequential Bayes rule above. posterior: (N, M) prior x p_c(x_0); likelihoods: (T, N, M)
    q_c(x_t | x_<t) for t = 1..T. Returns (N, T) losses in nats.
    """
    # in probability space, the posterior renormalised every step: exact and fast (every
    # likelihood is far from underflow: the chains have a uniform floor, the learner a > 0)
    posterior = posterior / posterior.sum(1, keepdims=True)
    losses = np.empty((posterior.shape[0], likelihoods.shape[0]))
    for t, step in enumerate(likelihoods):
        joint = posterior * step
        predictive = joint.sum(1)
        losses[:, t] = -np.log(predictive)
        posterior = joint / predictive[:, None]
    return losses


def bayes_losses(windows, transition, stationary, prior):
    """
    Per-position loss (nats) of the Bayes-optimal predictor of a mixture of Markov chains.
    windows: (N, T+1) token ids; transition: (M, V, V); stationary: (M, V); prior: (M,).
    The posterior over the M chains starts at prior x stationary(x_0) and is updated token by
    token; the predictive is the posterior-weighted mix of the chains' next-token rows.
    Returns (N, T): the loss of predicting x_t from x_0..x_{t-1}, t = 1..T.
    """
    windows = np.asarray(windows)
    posterior = prior[None, :] * stationary[:, windows[:, 0]].T                 # (N, M)
    likelihoods = transition[:, windows[:, :-1], windows[:, 1:]].transpose(2, 1, 0)   # (T, N, M)
    return _sequential_bayes(posterior, likelihoods)


# -----------------------------------------------------------------------------
# the learner: Dirichlet-smoothed transition counts of the run's own training tokens

def transition_counts(tokens, doc_start, doc_end, doc_comp, n_comp, vocab, eot):
    """
    (n_comp, vocab, vocab) int64 counts of the transitions a -> b inside documents: every
    adjacent pair tokens[i], tokens[i + 1] with doc_start <= i < i + 1 < doc_end of some document,
    added to that document's component. Pairs into or out of `eot` are not counted. Each document
    counts once (the unique tokens a run trained on, not its epochs).
    """
    tokens = np.asarray(tokens)
    lengths = np.asarray(doc_end) - np.asarray(doc_start)
    # the first token of every pair: positions doc_start .. doc_end - 2 of each document, i.e.
    # doc_start + 0, 1, ..., n_pairs - 1 (a running index minus where the document's pairs begin)
    n_pairs = np.maximum(lengths - 1, 0)
    begin = np.cumsum(n_pairs) - n_pairs
    first = np.repeat(np.asarray(doc_start) - begin, n_pairs) + np.arange(n_pairs.sum())
    comp = np.repeat(np.asarray(doc_comp), n_pairs)
    a, b = tokens[first].astype(np.int64), tokens[first + 1].astype(np.int64)
    keep = (a != eot) & (b != eot)
    a, b, comp = a[keep], b[keep], comp[keep]
    if a.size and max(a.max(), b.max()) >= vocab:
        raise ValueError(f"token {max(a.max(), b.max())} is outside the {vocab} chain states")
    flat = np.bincount((comp * vocab + a) * vocab + b, minlength=n_comp * vocab * vocab)
    return flat.reshape(n_comp, vocab, vocab).astype(np.int64)


def dirichlet_evidence(counts, alphas):
    """
    ln p(counts | a) of one chain's rows under a symmetric Dirichlet(a) prior, for every a in
    `alphas` at once: sum over rows r of ln G(V a) - ln G(V a + n_r) + sum_j [ln G(a + n_rj) - ln G(a)].
    Rows and entries with no counts contribute exactly zero and are skipped.
    """
    counts = np.asarray(counts)
    a = np.asarray(alphas, dtype=float)[..., None]
    vocab = counts.shape[-1]
    rows = counts.sum(-1)
    rows, cells = rows[rows > 0], counts[counts > 0]
    return ((gammaln(vocab * a) - gammaln(vocab * a + rows)).sum(-1)
            + (gammaln(a + cells) - gammaln(a)).sum(-1))


def _maximise_in_log(evidence, lo=1e-4, hi=1e4):
    """The a in [lo, hi] maximising evidence(a): a coarse grid in ln a (vectorised; robust to a
    flat or multimodal evidence), then bounded Brent between the best grid point's neighbours."""
    grid = np.linspace(np.log(lo), np.log(hi), 81)
    best = int(np.argmax(evidence(np.exp(grid))))
    bounds = grid[max(best - 1, 0)], grid[min(best + 1, len(grid) - 1)]
    result = minimize_scalar(lambda s: -evidence(np.exp(s)), bounds=bounds, method="bounded",
                             options={"xatol": 1e-6})
    return float(np.exp(result.x))


def fit_alpha(counts):
    """
    One symmetric Dirichlet concentration per chain, maximising dirichlet_evidence in ln a.
    counts: (M, V, V) or (V, V). Returns (M,) float64, (1,) for a single chain. A chain without
    any counts has no evidence about a: ValueError.
    """
    counts = np.asarray(counts)
    fitted = []
    for c, chain in enumerate(counts[None] if counts.ndim == 2 else counts):
        if chain.sum() == 0:
            raise ValueError(f"chain {c} has no transition counts: its concentration cannot be fitted")
        fitted.append(_maximise_in_log(lambda a, chain=chain: dirichlet_evidence(chain, a)))
    return np.array(fitted)


def fit_shared_alpha(counts):
    """One concentration for every chain of counts (M, V, V): the prior of the model class that
    these chains are draws of, by maximum marginal likelihood of all their rows together."""
    counts = np.asarray(counts)
    if counts.sum() == 0:
        raise ValueError("no transition counts: the shared concentration cannot be fitted")
    return _maximise_in_log(lambda a: sum(dirichlet_evidence(chain, a) for chain in counts))


def stationary_distribution(transition):
    """(M, V, V) row-stochastic, ergodic -> (M, V): solves pi P = pi, sum(pi) = 1 exactly."""
    m, v, _ = transition.shape
    system = np.swapaxes(transition, 1, 2) - np.eye(v)         # (P^T - I) pi = 0 ...
    system[:, -1, :] = 1.0                                     # ... with one equation replaced
    rhs = np.zeros((m, v, 1))                                  # by sum(pi) = 1
    rhs[:, -1] = 1.0
    return np.linalg.solve(system, rhs)[..., 0]


def earlier_matches(keys):
    """(N, T) -> (N, T): for every position t, how many positions s < t of its row have keys[s] == keys[t]."""
    keys = np.asarray(keys)
    # a stable sort per row puts equal keys next to each other in their original order, so an
    # element's rank inside its run of equal keys is the number of equal keys before it
    order = np.argsort(keys, axis=1, kind="stable")
    ranked = np.take_along_axis(keys, order, axis=1)
    position = np.broadcast_to(np.arange(keys.shape[1]), keys.shape)
    run_start = np.ones(keys.shape, dtype=bool)
    run_start[:, 1:] = ranked[:, 1:] != ranked[:, :-1]
    first = np.maximum.accumulate(np.where(run_start, position, 0), axis=1)
    matches = np.empty(keys.shape, dtype=np.int64)
    np.put_along_axis(matches, order, position - first, axis=1)
    return matches


def learner_losses(windows, counts, alphas, prior):
    """
    Per-position loss (nats) of the learner: exact sequential Bayes over the M hypotheses given by
    training counts (M, V, V) and concentrations alphas (M,), starting from prior (M,) x the
    stationary distribution of each posterior-mean chain at x_0 (see the module docstring).
    windows: (N, T+1) states in 0..V-1. Returns (N, T) float64, the loss of x_t, t = 1..T.
    """
    windows = np.asarray(windows, dtype=np.int64)
    counts = np.asarray(counts, dtype=float)
    alphas = np.asarray(alphas, dtype=float)
    prior = np.asarray(prior, dtype=float)
    vocab = counts.shape[-1]
    prev, nxt = windows[:, :-1], windows[:, 1:]
    # the window's own earlier transitions, the same under every hypothesis: how often this pair,
    # and how often any transition out of x_{t-1}, occurred before position t
    own_pair = earlier_matches(prev * vocab + nxt)[..., None]            # (N, T, 1)
    own_row = earlier_matches(prev)[..., None]
    a = alphas[None, None, :]
    numerator = counts[:, prev, nxt].transpose(1, 2, 0) + own_pair + a      # (N, T, M)
    denominator = counts.sum(2)[:, prev].transpose(1, 2, 0) + own_row + vocab * a
    likelihoods = (numerator / denominator).transpose(1, 0, 2)              # (T, N, M)
    mean_chain = counts + alphas[:, None, None]
    mean_chain /= mean_chain.sum(2, keepdims=True)
    start = stationary_distribution(mean_chain)[:, windows[:, 0]].T          # (N, M)
    return _sequential_bayes(prior[None, :] * start, likelihoods)


def learner1_losses(windows, counts, alpha):
    """The learner told the window's chain: one hypothesis, counts (V, V), concentration alpha."""
    return learner_losses(windows, np.asarray(counts)[None], [alpha], [1.0])


def in_context_losses(windows, vocab, alpha):
    """
    The in-context learner of a chain it has never seen: it knows the model class (first-order
    chains, a symmetric Dirichlet(alpha) prior on every row, alpha fitted on the training chains:
    fit_shared_alpha) but has no counts, only the window's own transitions, so
    p(x_t | x_<t) = (w[i, j] + alpha) / (w[i].sum() + V alpha), i = x_{t-1}, j = x_t. The ideal
    of learning a new chain in context: a reference, not a bound (uniform at t = 1: ln V).
    """
    return learner_losses(windows, np.zeros((1, vocab, vocab)), [alpha], [1.0])
