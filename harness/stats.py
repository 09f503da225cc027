"""
Statistics of the harness: intervals over seeds and documents, paired differences, Holm, the trend
test, and the fitted laws with intervals from refitting. No plotting here; plot.py draws and writes
what this module computes; harness/simulation.py checks the intervals' coverage by simulation.

Design. Every run of a dataset is scored on the same evaluation windows, grouped by document, so
the data are crossed: seeds x documents. An estimate is the plain mean over seeds of the window
mean (a paired difference: that of K minus that of the reference K, on the same windows). It
should generalise over both sources of chance: a new set of seeds AND a new set of documents.

Intervals (the method, documented here once). With Z[s, d] the mean of seed s's windows in
document d and w_d the document's share of the windows, the two-way crossed random-effects model
Z[s, d] = mu + seed_s + doc_d + residual_sd gives the variance of the estimate as

    Var = var_seed / S + sum_d w_d^2 var_doc + sum_d w_d^2 var_residual / S,

estimated by ANOVA moments (Cornfield & Tukey 1956; Searle, Casella & McCulloch 1992, ch. 4):
    seed term      V_seed = sample variance of the per-seed estimates / S   (df S - 1),
    document term  V_doc  = f sum_d w_d^2 (column mean_d - estimate)^2   (df D - 1),
    interaction    V_int  = f sum_d w_d^2 sum_s residual_sd^2 / (S - 1) / S,
and Var = V_seed + max(V_doc - V_int, 0): each column mean carries the residual once more, which
the seed term already counts. With equal windows per document, f = D / (D - 1) and these are
the classical unbiased mean squares. Documents may hold unequal numbers of windows (papers
differ in length); then E[sum_d w_d^2 (column_d - estimate)^2] = var_doc sum_d w_d^2 (1 - 2 w_d
+ sum w^2), so f = sum w^2 / sum w^2 (1 - 2 w + sum w^2) keeps the term unbiased
(`_document_factor`). D / (D - 1) in its place underestimates it: where documents' window
counts are log-normal (sd 1) a mean's interval covered 93%, and where one document holds 40% of
the windows 88%; with f, 94% and 99%.

A paired difference adds the seed terms of both sides (different training runs) and takes the
document term from the per-document difference, so pairing cancels the document main effect.
The interval is estimate +- t(0.975, nu) sqrt(Var), nu the Welch-Satterthwaite
degrees of freedom of that sum of mean squares (Satterthwaite 1946; Welch 1947 for the two
sides of a difference). Why not the bootstrap: resampling 3 seeds with replacement underestimates
their variance by (S - 1) / S and has only 10 distinct draws, so where seeds dominate a paired
difference, the crossed bootstrap covers 82% at 3 seeds instead of 95%; the t quantile with nu
near S - 1 pays for estimating the seed variance from S values and covers 94-96% at 3 and 5 seeds
and 94-97% at 2 in every regime (simulation.coverage_table, BENCHMARKS.md). It errs on the safe side where
seeds dominate a difference: the Satterthwaite df, estimated, run a little below the true df.

What an interval covers (`interval_scope`): with one seed the seed term cannot be estimated, so
the interval is over documents only (conditional on that seed's training run); with one
document, over seeds only; with one of each, nothing ("n/a", never a zero-width interval).

The fitted laws and their intervals from refitting are in laws.py.
"""
from collections import namedtuple

import numpy as np
from scipy import sparse
from scipy import stats as scipy_stats

LEVEL = 0.95
SCOPES = ("seeds and documents", "documents only", "seeds only", "n/a")


# -----------------------------------------------------------------------------
# the design: per-seed document means

DocumentMeans = namedtuple("DocumentMeans", "means weights ids")   # (S, D, *P), (D,), (D,)


def document_means(values, docs):
    """
    Per seed, the mean of `values` (S seeds, N windows[, ...]) over each document's windows, the
    documents' shares of the windows (the weights that make their weighted mean the window mean)
    and the document ids. Document ids may be any sortable values (numbers, 'category:doc' strings).
    """
    values = np.asarray(values, dtype=np.float64)
    n_seeds, n_windows = values.shape[:2]
    ids, index = np.unique(np.asarray(docs), return_inverse=True)
    index = index.ravel()
    counts = np.bincount(index, minlength=len(ids)).astype(np.float64)
    grouping = sparse.csr_matrix((np.ones(n_windows), (index, np.arange(n_windows))),
                                 shape=(len(ids), n_windows))
    flat = values.reshape(n_seeds, n_windows, -1)
    sums = np.stack([grouping @ flat[s] for s in range(n_seeds)])
    means = (sums / counts[None, :, None]).reshape((n_seeds, len(ids)) + values.shape[2:])
    return DocumentMeans(means, counts / n_windows, ids)


def interval_scope(seed_counts, n_docs):
    """
    What an interval over these cells can cover: "seeds and documents", "documents only" (a cell
    has one seed: seed-to-seed variation cannot be estimated), "seeds only" (one document) or "n/a".
    The single place that decides it; tables, figures and fits all ask here.
    """
    seeds, documents = min(seed_counts) >= 2, n_docs >= 2
    return SCOPES[0] if seeds and documents else SCOPES[1] if documents else SCOPES[2] if seeds else SCOPES[3]


# -----------------------------------------------------------------------------
# the chosen interval: crossed random-effects variance, Satterthwaite df, t quantile

def _weighted_sum(weights, array):
    """sum_d weights[d] * array[d, ...] over the first axis."""
    return np.tensordot(weights, array, axes=(0, 0))


def _residuals(means, per_seed):
    """Z[s, d] - per-seed estimate - column mean + estimate: the seed x document residual (S, D, *P)."""
    columns = means.mean(axis=0)
    return means - per_seed[:, None] - columns[None] + per_seed.mean(axis=0)[None, None]


def _document_factor(weights):
    """f of the document and interaction terms for document shares w (module docstring): the
    factor that makes sum_d w_d^2 (column_d - estimate)^2 unbiased; D / (D - 1) for equal shares."""
    square = float(np.sum(weights ** 2))
    return square / float(np.sum(weights ** 2 * (1 - 2 * weights + square)))


def _moment_terms(means, weights):
    """One side's per-seed estimates (S, *P), its seed term V_seed and interaction term V_int."""
    n_seeds, n_docs = means.shape[:2]
    per_seed = np.tensordot(means, weights, axes=(1, 0)).reshape((n_seeds,) + means.shape[2:])
    nan = np.full(means.shape[2:], np.nan)
    if n_seeds < 2:
        return per_seed, nan, nan
    seed_term = per_seed.var(axis=0, ddof=1) / n_seeds
    if n_docs < 2:
        return per_seed, seed_term, nan
    per_doc = (_residuals(means, per_seed) ** 2).sum(axis=0) / (n_seeds - 1)
    interaction = _document_factor(weights) * _weighted_sum(weights ** 2, per_doc) / n_seeds
    return per_seed, seed_term, interaction


def _document_term(columns, weights):
    """f sum_d w_d^2 (column_d - weighted mean)^2: the cluster variance over documents."""
    n_docs = len(weights)
    if n_docs < 2:
        return np.full(columns.shape[1:], np.nan)
    deviation = columns - _weighted_sum(weights, columns)[None]
    return _document_factor(weights) * _weighted_sum(weights ** 2, deviation ** 2)


def satterthwaite(pieces):
    """
    sum of signed variance pieces [(variance, df)], elementwise, and its Welch-Satterthwaite df
    (sum)^2 / sum(piece^2 / df). A zero total gets df = inf (no spread: no quantile to pay for).
    """
    total = sum(v for v, _ in pieces)
    if len(pieces) == 1:                       # nothing to combine: the piece's own df, exactly
        return total, np.where(np.asarray(total) > 0, float(pieces[0][1]), np.inf)
    denominator = sum(np.asarray(v) ** 2 / df for v, df in pieces)
    with np.errstate(divide="ignore", invalid="ignore"):
        safe = np.where(denominator > 0, denominator, 1)
        df = np.where(denominator > 0, np.asarray(total) ** 2 / safe, np.inf)
    return total, df


def combine_terms(pieces):
    """
    [(source, df, sign, variance)] -> (variance, df), elementwise: seeds + documents - interaction
    with Satterthwaite df. Where documents - interaction is not positive the documents add nothing
    measurable (the document term only repeats the residual) and the seed terms stand alone.
    The one rule for intervals of means and differences and for refitted laws alike.
    """
    seeds = [(v, df) for source, df, sign, v in pieces if source.startswith("seeds")]
    documents = [(sign * np.asarray(v), df) for source, df, sign, v in pieces
                 if not source.startswith("seeds")]
    if not (seeds and documents):
        return satterthwaite(seeds + documents)
    together, alone = satterthwaite(seeds + documents), satterthwaite(seeds)
    keep = sum(v for v, _ in documents) > 0
    return np.where(keep, together[0], alone[0]), np.where(keep, together[1], alone[1])


def crossed_variance(sides, weights):
    """
    Variance of sum(sign * estimate) over `sides` [(doc means (S, D, *P), sign)] that share the
    documents, with its Satterthwaite df and what it covers (module docstring). Elementwise over P.
    """
    weights = np.asarray(weights, dtype=np.float64)
    n_docs = len(weights)
    covers = interval_scope([len(m) for m, _ in sides], n_docs)
    columns = sum(sign * means.mean(axis=0) for means, sign in sides)        # per-document contrast
    estimate = _weighted_sum(weights, columns)
    if covers == "n/a":
        nan = np.full(np.shape(estimate), np.nan)
        return {"estimate": estimate, "variance": nan, "df": nan, "covers": covers}
    terms = [(_moment_terms(means, weights), len(means)) for means, _ in sides]
    pieces = []
    if covers != "documents only":       # with one seed, conditional on it: no seed term
        pieces += [("seeds", n_seeds - 1, 1.0, t[1]) for t, n_seeds in terms]
    if covers != "seeds only":
        pieces.append(("documents", n_docs - 1, 1.0, _document_term(columns, weights)))
    if covers == "seeds and documents":
        pieces += [("interaction", (n_seeds - 1) * (n_docs - 1), -1.0, t[2]) for t, n_seeds in terms]
    variance, df = combine_terms(pieces)
    return {"estimate": estimate, "variance": variance, "df": df, "covers": covers}


def t_interval(estimate, variance, df, covers, level=LEVEL):
    """{"value", "ci", "se", "df", "covers"}: estimate +- t(level, df) se (arrays become lists)."""
    se = np.sqrt(variance)
    with np.errstate(invalid="ignore"):
        half = scipy_stats.t.ppf(0.5 + level / 2, df) * se
    as_list = lambda x: np.asarray(x, dtype=float).tolist()     # noqa: E731
    return {"value": as_list(estimate), "ci": [as_list(estimate - half), as_list(estimate + half)],
            "se": as_list(se), "df": as_list(df), "covers": covers}


def t_p_value(estimate, variance, df):
    """Two-sided p for 'the expected value is 0' from the same t reference as the interval."""
    with np.errstate(divide="ignore", invalid="ignore"):
        statistic = np.abs(estimate) / np.sqrt(variance)
        p = 2 * scipy_stats.t.sf(statistic, df)
    return np.where(np.asarray(variance) == 0, np.where(np.asarray(estimate) == 0, 1.0, 0.0), p)


def mean_interval(cell, level=LEVEL):
    """The mean over seeds and windows of one cell (DocumentMeans) with its crossed t interval."""
    v = crossed_variance([(cell.means, 1.0)], cell.weights)
    return t_interval(v["estimate"], v["variance"], v["df"], v["covers"], level)


def difference_interval(cell_a, cell_b, level=LEVEL):
    """
    Paired a - b of two cells on the same documents (each side's seeds are separate training
    runs): the mean over a's seeds minus the mean over b's seeds, averaged over windows, with its
    crossed t interval and the two-sided p-value of 'no difference' ("p_value").
    """
    if not np.array_equal(cell_a.ids, cell_b.ids):
        raise ValueError("a paired difference needs both cells on the same documents")
    return combination_interval([(cell_a, 1.0), (cell_b, -1.0)], cell_a.weights, level)


def crossed_mean(values, docs, level=LEVEL):
    """Mean over seeds and windows of `values` (S, N[, P]) with its crossed t interval."""
    return mean_interval(document_means(values, docs), level)


def crossed_paired_difference(a, b, docs, level=LEVEL):
    """Paired a - b of window values (S_a, N[, P]) and (S_b, N[, P]) on the same windows;
    see difference_interval."""
    return difference_interval(document_means(a, docs), document_means(b, docs), level)


def interval_component(result, index):
    """Entry `index` of an interval over a vector of statistics: every list-valued field indexed."""
    pick = lambda x: x[index] if isinstance(x, list) else x       # noqa: E731
    return {key: ([pick(x) for x in value] if key == "ci" else pick(value)) for key, value in result.items()}


# -----------------------------------------------------------------------------
# tests across K

def holm(p_values):
    """Holm step-down adjusted p-values (family-wise error control), in the input order."""
    p = np.asarray(p_values, dtype=float)
    order = np.argsort(p)
    stepped = np.minimum(1.0, (len(p) - np.arange(len(p))) * p[order])
    adjusted = np.empty_like(p)
    adjusted[order] = np.maximum.accumulate(stepped)
    return adjusted


def holm_levels(p_values, alpha=1 - LEVEL):
    """
    The confidence level at which Holm's step-down tests each hypothesis: the j-th smallest of m
    p-values against alpha / (m - j) while every smaller one was rejected; from the first that is
    not, every later one at that first one's level. So a hypothesis's interval at its level
    excludes 0 exactly when Holm rejects it (for t tests: stats.t_interval and t_p_value).
    """
    p = np.asarray(p_values, dtype=float)
    order = np.argsort(p, kind="stable")
    levels, m = np.empty_like(p), len(p)
    stopped = None
    for j, i in enumerate(order):
        if stopped is None and p[i] > alpha / (m - j):
            stopped = j
        levels[i] = 1 - alpha / (m - (j if stopped is None else stopped))
    return levels


def combination_interval(terms, weights, level=LEVEL):
    """
    A linear combination sum_c coef_c x cell_c of cells (DocumentMeans (S_c, D, ...) on the same
    documents; each cell's seeds separate training runs), given as [(cell, coef)] with each cell
    once (merge repeats first: a cell's seed term counts once, scaled by coef^2), with its crossed
    t interval and p-value. A difference is [(a, 1), (b, -1)].
    """
    sides = [(coef * cell.means, 1.0) for cell, coef in terms if coef != 0]
    v = crossed_variance(sides, weights)
    result = t_interval(v["estimate"], v["variance"], v["df"], v["covers"], level)
    result["p_value"] = np.asarray(t_p_value(v["estimate"], v["variance"], v["df"])).tolist()
    return result


def trend_test(k, y):
    """
    Linear regression of run-level XE on K (slope, 95% CI, p) and Spearman's rank correlation.
    "single_seed_ks" lists the K values with one run: there the residual scatter that the p-value
    rests on is one seed's, and with one seed at every K it is lack of fit and seed noise together.
    """
    k, y = np.asarray(k, dtype=float), np.asarray(y, dtype=float)
    if len(np.unique(k)) < 2 or len(y) < 3:
        return None
    fit = scipy_stats.linregress(k, y)
    half = scipy_stats.t.ppf(0.975, len(y) - 2) * fit.stderr
    rho, p_rank = scipy_stats.spearmanr(k, y)
    values, counts = np.unique(k, return_counts=True)
    return {"slope": fit.slope, "slope_ci": [fit.slope - half, fit.slope + half],
            "p_value": fit.pvalue, "spearman_rho": rho, "spearman_p": p_rank, "n_runs": len(y),
            "single_seed_ks": [int(v) if float(v).is_integer() else float(v) for v in values[counts == 1]]}
