"""references.py: the exact Bayes-optimal, oracle and learner predictors against brute force."""
import itertools

import numpy as np
import pytest
from scipy.special import gammaln

from harness import references as R
import train
from harness.data import Dataset


def random_chains(rng, m, v):
    transition = rng.dirichlet(np.full(v, 0.5), size=(m, v)) * 0.9 + 0.1 / v
    stationary = np.stack([np.linalg.matrix_power(p, 200)[0] for p in transition])
    return transition, stationary


def sample_windows(rng, transition, stationary, n, length):
    x = np.empty((n, length), dtype=np.int64)
    x[:, 0] = rng.choice(len(stationary), size=n, p=stationary)
    for t in range(1, length):
        cdf = transition[x[:, t - 1]].cumsum(1)
        x[:, t] = np.minimum((cdf < rng.random(n)[:, None]).sum(1), len(stationary) - 1)
    return x


# ----------------------------------------------------------------------------- Bayes-optimal

def test_bayes_matches_brute_force_enumeration():
    """Expected per-position XE over every sequence of a 2-chain, 3-token mixture, length 5."""
    rng = np.random.default_rng(0)
    transition, stationary = random_chains(rng, 2, 3)
    prior = np.array([0.3, 0.7])
    seqs = np.array(list(itertools.product(range(3), repeat=5)))

    def joint(prefix):            # p(x_0..x_t) under the mixture, by direct summation
        total = 0.0
        for m in range(2):
            p = prior[m] * stationary[m, prefix[0]]
            for a, b in zip(prefix[:-1], prefix[1:]):
                p *= transition[m, a, b]
            total += p
        return total

    p_seq = np.array([joint(s) for s in seqs])
    assert abs(p_seq.sum() - 1) < 1e-12
    brute = np.array([[-np.log(joint(s[:t + 1]) / joint(s[:t])) for t in range(1, 5)] for s in seqs])
    ours = R.bayes_losses(seqs, transition, stationary, prior)
    np.testing.assert_allclose(ours, brute, rtol=1e-10)                       # every sequence
    np.testing.assert_allclose(p_seq @ ours, p_seq @ brute, rtol=1e-10)        # expected XE(t)


@pytest.mark.parametrize("k", [2, 3, 5])
def test_bayes_excess_over_oracle_is_at_most_ln_k(k):
    rng = np.random.default_rng(k)
    transition, stationary = random_chains(rng, k, 6)
    prior = np.full(k, 1 / k)
    excess = []
    for c in range(k):                          # windows sampled from each component
        x = sample_windows(rng, transition[c], stationary[c], 200, 31)
        bayes = R.bayes_losses(x, transition, stationary, prior)
        oracle = R.bayes_losses(x, transition[[c]], stationary[[c]], np.ones(1))
        # per window: the summed excess is -log of the posterior of the true chain after x_0
        posterior0 = prior * stationary[:, x[:, 0]].T
        posterior0 /= posterior0.sum(1, keepdims=True)
        window_excess = (bayes - oracle).sum(1)
        assert np.all(window_excess <= -np.log(posterior0[:, c]) + 1e-9)
        excess.append(window_excess)
    assert np.mean(excess) <= np.log(k)
    assert np.mean(excess) > 0                  # identifying the chain costs something


# ----------------------------------------------------------------------------- the learner

def test_learner_with_very_many_counts_is_the_bayes_and_oracle_predictor():
    rng = np.random.default_rng(1)
    transition, stationary = random_chains(rng, 3, 8)
    counts, alphas, prior = 1e7 * transition, np.array([0.1, 1.0, 5.0]), np.array([0.2, 0.3, 0.5])
    for c in range(3):
        x = sample_windows(rng, transition[c], stationary[c], 200, 51)
        bayes = R.bayes_losses(x, transition, stationary, prior)
        oracle = R.bayes_losses(x, transition[[c]], stationary[[c]], np.ones(1))
        learner = R.learner_losses(x, counts, alphas, prior)
        learner1 = R.learner1_losses(x, counts[c], alphas[c])
        assert learner.shape == learner1.shape == (200, 50) and learner.dtype == np.float64
        assert np.abs(learner - bayes).mean() < 1e-3 and abs((learner - bayes).mean()) < 1e-4
        assert np.abs(learner1 - oracle).mean() < 1e-3 and abs((learner1 - oracle).mean()) < 1e-4


def dirichlet_multinomial_joint(prefix, counts, alphas, prior):
    """p(x_0..x_t) of the learner, summed over hypotheses, from whole-prefix marginal likelihoods."""
    v = counts.shape[-1]
    total = 0.0
    for c in range(len(prior)):
        posterior = counts[c] + alphas[c]                       # Dirichlet parameters of every row
        mean_chain = posterior / posterior.sum(1, keepdims=True)
        start = np.linalg.matrix_power(mean_chain, 500)[0]      # its stationary distribution
        seen = np.zeros((v, v))
        for a, b in zip(prefix[:-1], prefix[1:]):
            seen[a, b] += 1
        log_ml = (gammaln(posterior.sum(1)) - gammaln(posterior.sum(1) + seen.sum(1))).sum() \
            + (gammaln(posterior + seen) - gammaln(posterior)).sum()
        total += prior[c] * start[prefix[0]] * np.exp(log_ml)
    return total


def test_learner_matches_brute_force_dirichlet_multinomial():
    """Every sequence of length 5 over 3 states, 2 hypotheses: ratios of marginal likelihoods."""
    rng = np.random.default_rng(2)
    counts = rng.integers(0, 6, size=(2, 3, 3)).astype(float)
    counts[1, 2] = 0                                            # a row never seen in training
    alphas, prior = np.array([0.3, 1.7]), np.array([0.4, 0.6])
    seqs = np.array(list(itertools.product(range(3), repeat=5)))
    joints = {}
    for s in seqs:
        for t in range(1, 6):
            key = tuple(s[:t])
            if key not in joints:
                joints[key] = dirichlet_multinomial_joint(s[:t], counts, alphas, prior)
    p_seq = np.array([joints[tuple(s)] for s in seqs])
    assert abs(p_seq.sum() - 1) < 1e-12                         # a distribution over sequences
    brute = np.array([[-np.log(joints[tuple(s[:t + 1])] / joints[tuple(s[:t])]) for t in range(1, 5)]
                      for s in seqs])
    np.testing.assert_allclose(R.learner_losses(seqs, counts, alphas, prior), brute, rtol=1e-10)
    # told the hypothesis: the same sum with one term
    brute1 = np.array([[-np.log(dirichlet_multinomial_joint(s[:t + 1], counts[[1]], alphas[[1]], [1.0])
                                / dirichlet_multinomial_joint(s[:t], counts[[1]], alphas[[1]], [1.0]))
                        for t in range(1, 5)] for s in seqs])
    np.testing.assert_allclose(R.learner1_losses(seqs, counts[1], alphas[1]), brute1, rtol=1e-10)


def test_learner_of_one_chain_is_learner1():
    rng = np.random.default_rng(3)
    transition, stationary = random_chains(rng, 2, 8)
    counts = np.stack([np.bincount(8 * w[:-1] + w[1:], minlength=64).reshape(8, 8).astype(float)
                       for c in range(2) for w in sample_windows(rng, transition[c], stationary[c], 1, 400)])
    x = sample_windows(rng, transition[0], stationary[0], 50, 101)
    learner1 = R.learner1_losses(x, counts[0], 0.4)
    np.testing.assert_array_equal(R.learner_losses(x, counts[:1], [0.4], [1.0]), learner1)  # K = 1
    # two copies of one hypothesis are one hypothesis; a second, different one costs something
    np.testing.assert_allclose(R.learner_losses(x, counts[[0, 0]], [0.4, 0.4], [0.3, 0.7]), learner1,
                               rtol=1e-12)
    assert R.learner_losses(x, counts, [0.4, 0.4], [0.5, 0.5]).mean() > learner1.mean()


@pytest.mark.parametrize("alpha", [0.1, 1.0])
def test_fit_alpha_recovers_the_concentration(alpha):
    rng = np.random.default_rng(4)
    v, rows = 20, 400
    counts = np.stack([[rng.multinomial(rng.integers(20, 60), rng.dirichlet(np.full(v, alpha)))
                        for _ in range(rows)] for _ in range(2)])        # two chains, (2, 400, 20)
    fitted = R.fit_alpha(counts)
    assert fitted.shape == (2,)
    np.testing.assert_allclose(fitted, alpha, rtol=0.15)
    # the maximum: the evidence is lower a little either side
    for chain, a in zip(counts, fitted):
        assert R.dirichlet_evidence(chain, a) >= R.dirichlet_evidence(chain, [a * 0.99, a * 1.01]).max()
    with pytest.raises(ValueError, match="no transition counts"):
        R.fit_alpha(np.zeros((3, 3)))


def test_transition_counts_of_a_hand_made_mixture():
    eot = 3
    #                 0  1  2  3  4  5  6  7  8  9 10 11 12 13 14
    tokens = np.array([3, 0, 1, 1, 2, 3, 2, 2, 0, 3, 1, 0, 3, 3, 3], dtype=np.uint16)
    doc_start, doc_end, doc_comp = [1, 6, 10], [6, 9, 13], [0, 1, 0]
    counts = R.transition_counts(tokens, doc_start, doc_end, doc_comp, 2, 3, eot)
    expected = np.zeros((2, 3, 3), dtype=np.int64)
    for a, b in [(0, 1), (1, 1), (1, 2), (1, 0)]:       # docs 0 and 2: 0 1 1 2 EOT, 1 0 EOT
        expected[0, a, b] += 1
    for a, b in [(2, 2), (2, 0)]:                       # doc 1, cut to fit its quota: 2 2 0
        expected[1, a, b] += 1                          # (0 -> EOT at 8..9 is outside it)
    np.testing.assert_array_equal(counts, expected)


def test_transition_counts_of_a_runs_mixture(tiny_synthetic):
    """Every document of a real Mixture once, pair by pair, EOT excluded."""
    ds = Dataset(tiny_synthetic)
    names = ds.default_order[:2]
    mixture = train.Mixture(ds, names, [1500, 1201], seed=5)
    v = ds.vocab_size - 1
    counts = R.transition_counts(mixture.tokens, mixture.doc_start, mixture.doc_end, mixture.doc_comp,
                                 len(names), v, ds.eot)
    expected = np.zeros((2, v, v), dtype=np.int64)
    for s, e, c in zip(mixture.doc_start, mixture.doc_end, mixture.doc_comp):
        doc = mixture.tokens[s:e]
        for a, b in zip(doc[:-1], doc[1:]):
            if a != ds.eot and b != ds.eot:
                expected[c, a, b] += 1
    np.testing.assert_array_equal(counts, expected)
    # quota tokens minus one per document, minus the pairs into each document's closing EOT
    closing = np.array([mixture.tokens[e - 1] == ds.eot for e in mixture.doc_end])
    for c, quota in enumerate([1500, 1201]):
        mine = mixture.doc_comp == c
        assert counts[c].sum() == quota - mine.sum() - closing[mine].sum()


def test_in_context_learner_matches_brute_force_on_a_tiny_chain():
    """The learner of an unseen chain, by hand: each prediction the Dirichlet-multinomial posterior
    predictive of the window's own earlier transitions, (w[i, j] + a) / (w[i].sum() + V a)."""
    rng = np.random.default_rng(6)
    vocab, alpha = 4, 0.37
    windows = rng.integers(0, vocab, size=(30, 12))
    brute = np.empty((30, 11))
    for n, window in enumerate(windows):
        seen = np.zeros((vocab, vocab))
        for t in range(1, 12):
            i, j = window[t - 1], window[t]
            brute[n, t - 1] = -np.log((seen[i, j] + alpha) / (seen[i].sum() + vocab * alpha))
            seen[i, j] += 1
    np.testing.assert_allclose(R.in_context_losses(windows, vocab, alpha), brute, rtol=1e-12)
    assert np.allclose(R.in_context_losses(windows, vocab, alpha)[:, 0], np.log(vocab))   # nothing seen: uniform


def test_shared_alpha_is_the_maximum_of_the_summed_evidence():
    rng = np.random.default_rng(7)
    counts = np.stack([[rng.multinomial(40, rng.dirichlet(np.full(10, 0.2))) for _ in range(10)]
                       for _ in range(3)])                             # three chains of 10 states
    a = R.fit_shared_alpha(counts)
    total = lambda x: sum(R.dirichlet_evidence(chain, x) for chain in counts)    # noqa: E731
    assert total(a) >= max(total(a * 0.98), total(a * 1.02))
    assert 0.1 < a < 0.4                                                # near the truth, 0.2
