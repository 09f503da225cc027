"""
The intervals' coverage, checked by simulation (bench.py --what=coverage; tests/test_stats.py):
the crossed seeds x documents design that the report analyses is simulated in several regimes,
and each interval method's coverage of the truth counted. Also the previous method, the crossed
percentile bootstrap, kept as the baseline the chosen one (stats.py) is compared against.

    python bench.py --what=coverage                   # coverage table: regime x seeds x method
    python bench.py --what=coverage --fits=True       # and the fitted laws' intervals (minutes)
"""
import math
import time

import numpy as np
from scipy import stats as scipy_stats

from harness.data import BLOCK
from harness.stats import LEVEL, crossed_variance, document_means, mean_interval, satterthwaite, t_interval
from harness.laws import (curve_replicates, fit_linear_in_log_k, fit_position_curve, fit_power_law, position_law,
                          run_level_replicates)


# -----------------------------------------------------------------------------
# the previous method, kept as the coverage benchmark's baseline: the crossed percentile bootstrap

def _resample_counts(rng, n, size):
    """How often each of n units is drawn in each of `size` resamples of n with replacement."""
    draws = rng.integers(0, n, (size, n)) + n * np.arange(size)[:, None]
    return np.bincount(draws.ravel(), minlength=size * n).reshape(size, n).astype(np.float64)


def _doc_sums(values, docs):
    """Sum of each seed's window values within each document: (S, D, P); windows per document (D,)."""
    cell = document_means(values, docs)
    counts = cell.weights * np.shape(values)[1]
    return cell.means.reshape(cell.means.shape[:2] + (-1,)) * counts[None, :, None], counts


def _crossed_bootstrap(sides, docs, n_boot, seed):
    """sum(sign * seed-mean) over sides that share windows; seeds per side and documents resampled."""
    rng = np.random.default_rng(seed)
    summed = [(_doc_sums(values, docs), sign) for values, sign in sides]
    counts = summed[0][0][1]
    doc_weights = _resample_counts(rng, len(counts), n_boot)            # (B, D), shared
    numerator, estimate = 0.0, 0.0
    for (sums, _), sign in summed:
        n_seeds = len(sums)
        seed_weights = _resample_counts(rng, n_seeds, n_boot) / n_seeds  # (B, S)
        for s in range(n_seeds):
            numerator = numerator + sign * seed_weights[:, [s]] * (doc_weights @ sums[s])
        estimate = estimate + sign * sums.mean(axis=0).sum(axis=0) / counts.sum()
    return estimate, numerator / (doc_weights @ counts)[:, None]


def bootstrap_mean(values, docs, n_boot=2000, seed=0):
    """
    The baseline: mean over seeds and windows of `values` (S, N[, P]) and n_boot replicates that
    resample seeds and documents with replacement, one document draw for all seeds (they share
    the windows). Returns (estimate: scalar or (P,), replicates: (n_boot,) or (n_boot, P)).
    """
    values = np.asarray(values, dtype=np.float64)
    estimate, reps = _crossed_bootstrap([(values, 1.0)], docs, n_boot, seed)
    return estimate.reshape(values.shape[2:]), reps.reshape((n_boot,) + values.shape[2:])


# -----------------------------------------------------------------------------
# coverage benchmark: simulate the crossed design and count how often each interval covers the truth

DESIGN = {"n_docs": 60, "windows_per_doc": 16, "document_sd": 0.3, "window_sd": 0.1}
REGIMES = {   # the regimes, in nats; "interaction" is the document x K effect
    "seed-dominated": {"seed_sd": 0.026, "interaction_sd": 0.005},
    "document-dominated": {"seed_sd": 0.005, "interaction_sd": 0.1},
    "mixed": {"seed_sd": 0.02, "interaction_sd": 0.05},
}
# beyond the three: real papers differ in length, so documents hold unequal numbers of
# windows; here log-normal (sd 1 in log: the longest of 60 holds ~10x the median's windows)
UNEQUAL = {"mixed, unequal documents": {"seed_sd": 0.02, "interaction_sd": 0.05, "doc_length_sd": 1.0}}
TRUE_MEANS = (2.5, 2.3)      # mu of the cell at K and of the reference cell


def simulate_pair(regime, n_seeds, n_datasets, rng, design=DESIGN):
    """
    Window values of two cells, a (some K) and b (the reference K), for n_datasets independent
    experiments stacked on a trailing axis: a, b (S, N, n_datasets), the windows' document ids,
    and the truth {"mean": mu_a, "paired difference": mu_a - mu_b}. Generative model, for cell k,
    seed s (one training run) and window w of document d = d(w):
        Y[k, s, w] = mu_k + seed[k, s] + doc[d] + interaction[k, d] + noise[k, s, w]
    seed ~ N(0, seed_sd^2), a fresh draw per run (the two cells' seeds are different runs);
    doc ~ N(0, 0.3^2), shared by every run (all runs score the same windows);
    interaction ~ N(0, interaction_sd^2), the document x K effect, shared by the seeds of a K;
    noise ~ N(0, 0.1^2) per run and window (window noise 0.1 in every regime).
    Pairing cancels doc; interaction and the seeds remain in the difference. A regime with
    doc_length_sd gives documents log-normal numbers of windows (mean per_doc), else all per_doc.
    """
    n_docs, per_doc = design["n_docs"], design["windows_per_doc"]
    lengths = np.full(n_docs, per_doc)
    if regime.get("doc_length_sd"):
        spread = regime["doc_length_sd"]
        lengths = np.maximum(1, np.round(per_doc * np.exp(rng.normal(-spread ** 2 / 2, spread, n_docs))))
    docs = np.repeat(np.arange(n_docs), lengths.astype(int))
    doc = rng.normal(0, design["document_sd"], (n_docs, n_datasets))
    cells = []
    for mu in TRUE_MEANS:
        seed = rng.normal(0, regime["seed_sd"], (n_seeds, 1, n_datasets))
        interaction = rng.normal(0, regime["interaction_sd"], (n_docs, n_datasets))
        noise = rng.normal(0, design["window_sd"], (n_seeds, len(docs), n_datasets))
        cells.append(mu + seed + (doc + interaction)[docs][None] + noise)
    truth = {"mean": TRUE_MEANS[0], "paired difference": TRUE_MEANS[0] - TRUE_MEANS[1]}
    return cells[0], cells[1], docs, truth


def crossed_t_bounds(sides, docs, n_boot=None, seed=None):
    """The chosen method's (lo, hi) for sum(sign * mean) of `sides` [(values (S, N, ...), sign)]."""
    cells = [(document_means(values, docs), sign) for values, sign in sides]
    v = crossed_variance([(cell.means, sign) for cell, sign in cells], cells[0][0].weights)
    return t_interval(v["estimate"], v["variance"], v["df"], v["covers"])["ci"]


def crossed_bootstrap_bounds(sides, docs, n_boot=1000, seed=0):
    """The previous method (the baseline): crossed percentile bootstrap, as plot.py used it."""
    _, reps = _crossed_bootstrap(sides, docs, n_boot, seed)
    return np.percentile(reps, [50 * (1 - LEVEL), 50 * (1 + LEVEL)], axis=0)


def seed_t_bounds(sides, docs, n_boot=None, seed=None):
    """A t interval over the per-seed means alone (Welch for a difference): ignores document sampling."""
    pieces = []
    for values, sign in sides:
        per_seed = np.asarray(values, dtype=float).mean(axis=1)
        pieces.append((sign * per_seed.mean(axis=0), per_seed.var(axis=0, ddof=1) / len(per_seed),
                       len(per_seed) - 1))
    estimate = sum(p[0] for p in pieces)
    variance, df = satterthwaite([(p[1], p[2]) for p in pieces])
    half = scipy_stats.t.ppf(0.5 + LEVEL / 2, df) * np.sqrt(variance)
    return estimate - half, estimate + half


METHODS = {"crossed bootstrap (previous)": crossed_bootstrap_bounds,
           "t over seeds (Welch)": seed_t_bounds,
           "crossed t, Satterthwaite df (chosen)": crossed_t_bounds}
CHOSEN = "crossed t, Satterthwaite df (chosen)"


def coverage_table(methods=None, regimes=None, seed_counts=(2, 3, 4, 5), replicates=1000, n_boot=1000,
                   seed=0, statistics=("mean", "paired difference"), chunk=250):
    """
    Coverage of the true value and mean width of each method's 95% interval, per regime x
    statistic x seed count, over `replicates` simulated experiments (simulate_pair), processed
    `chunk` at a time on a trailing axis. The bootstrap baseline draws n_boot replicates, the
    same draws for every experiment of a chunk (fresh ones per chunk). Rows of dicts.
    """
    methods = METHODS if methods is None else methods
    regimes = {**REGIMES, **UNEQUAL} if regimes is None else regimes
    rows = []
    for r_index, (regime_name, regime) in enumerate(regimes.items()):
        for n_seeds in seed_counts:
            rng = np.random.default_rng([seed, r_index, n_seeds])
            tally = {(stat, name): [[], [], 0.0] for stat in statistics for name in methods}
            for start in range(0, replicates, chunk):
                a, b, docs, truth = simulate_pair(regime, n_seeds, min(chunk, replicates - start), rng)
                for stat in statistics:
                    sides = [(a, 1.0)] if stat == "mean" else [(a, 1.0), (b, -1.0)]
                    for name, method in methods.items():
                        began = time.perf_counter()
                        lo, hi = (np.asarray(x) for x in method(sides, docs, n_boot, seed + start))
                        hits, widths, seconds = tally[stat, name]
                        hits.append((lo <= truth[stat]) & (truth[stat] <= hi))
                        widths.append(hi - lo)
                        tally[stat, name][2] = seconds + time.perf_counter() - began
            for (stat, name), (hits, widths, seconds) in tally.items():
                rows.append({"regime": regime_name, "statistic": stat, "n_seeds": n_seeds, "method": name,
                             "coverage": float(np.mean(np.concatenate(hits))),
                             "mean_width": float(np.mean(np.concatenate(widths))),
                             "replicates": replicates, "seconds": seconds})
    return rows


def markdown_table(rows):
    """Rows of coverage_table as markdown: one line per regime x statistic x seeds,
    'coverage (width)' per method."""
    methods = list(dict.fromkeys(r["method"] for r in rows))
    lines = ["| regime | statistic | seeds | " + " | ".join(methods) + " |",
             "|---" * (3 + len(methods)) + "|"]
    cells = {}
    for r in rows:
        cells.setdefault((r["regime"], r["statistic"], r["n_seeds"]), {})[r["method"]] = r
    for (regime, stat, n_seeds), by_method in cells.items():
        lines.append(f"| {regime} | {stat} | {n_seeds} | " + " | ".join(
            f"{by_method[m]['coverage']:.3f} ({by_method[m]['mean_width']:.4f})" if m in by_method else ""
            for m in methods) + " |")
    return "\n".join(lines)


# -----------------------------------------------------------------------------
# coverage of the fitted laws' intervals, simulated the same way

LAWS_TRUTH = {"lnK": {"a": 3.0, "b": 0.1}, "power": {"E": 2.0, "B": 0.1, "beta": 0.6},
              "position": {"x1": 3.5, "d": 1.4, "c": 0.7}}


def simulate_sweep(regime, n_seeds, rng, ks=(1, 2, 3, 4, 5), design=DESIGN):
    """
    One simulated sweep for the fitted laws, window values per K (S, N, 2): column 0 follows
    a + b ln K (mean XE), column 1 E + B K^beta (late XE), each with its own effects drawn as in
    simulate_pair (document effect shared across K, interaction per K x document, seed per run).
    Returns ({K: values}, docs).
    """
    n_docs, per_doc = design["n_docs"], design["windows_per_doc"]
    docs = np.repeat(np.arange(n_docs), per_doc)
    doc = rng.normal(0, design["document_sd"], (n_docs, 2))
    lnk, power = LAWS_TRUTH["lnK"], LAWS_TRUTH["power"]
    cells = {}
    for k in ks:
        mu = np.array([lnk["a"] + lnk["b"] * math.log(k), power["E"] + power["B"] * k ** power["beta"]])
        seed = rng.normal(0, regime["seed_sd"], (n_seeds, 1, 2))
        interaction = rng.normal(0, regime["interaction_sd"], (n_docs, 2))
        noise = rng.normal(0, design["window_sd"], (n_seeds, len(docs), 2))
        cells[k] = mu + seed + (doc + interaction)[docs][None] + noise
    return cells, docs


def simulate_curves(regime, n_seeds, rng, design=DESIGN, token_sd=0.5):
    """
    One cell's per-position losses (S, N, BLOCK) around position_law(x1 = 3.5, d = 1.4, c = 0.7):
    seed and document effects that shift the whole curve and change its early part (a random
    multiple of t^-0.5 each), a per-run window shift of window_sd, and token noise of token_sd.
    Positions share all but the token noise, which is what makes covariance intervals optimistic.
    """
    n_docs, per_doc = design["n_docs"], design["windows_per_doc"]
    docs = np.repeat(np.arange(n_docs), per_doc)
    t = np.arange(1, BLOCK + 1)
    shape = t ** -0.5
    truth = LAWS_TRUTH["position"]
    seed = rng.normal(0, regime["seed_sd"], (n_seeds, 1, 2))
    doc = rng.normal(0, [design["document_sd"], regime["interaction_sd"]], (n_docs, 2))[docs]
    values = (position_law(t, truth["x1"], truth["d"], truth["c"]) + seed[..., :1] + seed[..., 1:] * shape
              + doc[None, :, :1] + doc[None, :, 1:] * shape
              + rng.normal(0, design["window_sd"], (n_seeds, len(docs), 1))
              + rng.normal(0, token_sd, (n_seeds, len(docs), BLOCK)))
    return values, docs


def fitted_laws(cells, docs, curve, n_rep, seed):
    """The three fits on one simulated sweep, made as plot.py makes them: {law: fit}."""
    ks = sorted(cells)
    runs_k = np.repeat(ks, [len(cells[k]) for k in ks])
    fits = {}
    for law, column in (("lnK", 0), ("power", 1)):
        per_cell = [document_means(cells[k][..., column], docs) for k in ks]
        points = np.concatenate([cells[k][..., column].mean(axis=1) for k in ks])
        fit = fit_linear_in_log_k if law == "lnK" else fit_power_law
        fits[law] = fit(runs_k, points, run_level_replicates(per_cell, points, n_rep, seed))
    cell = document_means(*curve)
    mean_curve = mean_interval(cell)
    fits["position"] = fit_position_curve(mean_curve["value"], mean_curve["se"],
                                          curve_replicates(cell, mean_curve["value"], n_rep, seed))
    return fits


def fit_coverage(regimes=None, n_seeds=3, replicates=200, n_rep=300, seed=0):
    """
    Coverage of the true parameters by the refitted intervals and, for comparison, by the fit
    covariance ("ci_fit_covariance"), per regime x law x parameter, over `replicates` sweeps.
    """
    regimes = REGIMES if regimes is None else regimes
    power = LAWS_TRUTH["power"]
    truth = {"lnK": LAWS_TRUTH["lnK"],
             "power": {"a": power["E"] + power["B"], "c": power["B"] * power["beta"], "beta": power["beta"]},
             "position": LAWS_TRUTH["position"]}
    rows = []
    for r_index, (regime_name, regime) in enumerate(regimes.items()):
        rng = np.random.default_rng([seed, r_index, n_seeds, 7])
        tally = {(law, name): [] for law, params in truth.items() for name in params}
        began = time.perf_counter()
        for i in range(replicates):
            cells, docs = simulate_sweep(regime, n_seeds, rng)
            fits = fitted_laws(cells, docs, simulate_curves(regime, n_seeds, rng), n_rep, seed + i)
            for (law, name), hits in tally.items():
                p = fits[law].get("params", {}).get(name)
                value = truth[law][name]
                hits.append([np.nan, np.nan] if p is None else
                            [p["ci"][0] <= value <= p["ci"][1],
                             p["ci_fit_covariance"][0] <= value <= p["ci_fit_covariance"][1]])
        seconds = time.perf_counter() - began
        for (law, name), hits in tally.items():
            hits = np.asarray(hits, dtype=float)
            rows.append({"regime": regime_name, "law": law, "parameter": name, "n_seeds": n_seeds,
                         "coverage_refit": float(np.nanmean(hits[:, 0])),
                         "coverage_fit_covariance": float(np.nanmean(hits[:, 1])),
                         "replicates": replicates, "seconds": seconds})
    return rows


def fit_markdown_table(rows):
    """Rows of fit_coverage as markdown: coverage of the refitted and of the covariance intervals."""
    lines = ["| regime | law | parameter | refitted (chosen) | fit covariance (previous) |",
             "|---|---|---|---|---|"]
    lines += [f"| {r['regime']} | {r['law']} | {r['parameter']} | {r['coverage_refit']:.3f} | "
              f"{r['coverage_fit_covariance']:.3f} |" for r in rows]
    return "\n".join(lines)
