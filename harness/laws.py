"""
The fitted laws of the report, with intervals from refitting: XE against ln K, the late-position
XE against K as a power law, and XE(t) against the position t; their point fits (least squares,
in forms that stay finite at their logarithmic limits) and their resampled intervals.

Fitted laws get intervals from refitting on perturbed data (`crossed_replicates`): one block of
replicates per term above (the seeds of each cell; the documents, one draw shared by every cell
because the cells share documents; the residual, subtracted), each a Gaussian-multiplier (wild)
bootstrap whose replicate covariance equals that term, so that a law's interval carries the
correlation between positions and between K values that share windows. A parameter's per-block
variances combine as the terms do, and their Satterthwaite df sets the t quantile, as for a mean.
"""
import inspect
import math
import warnings

import numpy as np
from scipy import optimize
from scipy import stats as scipy_stats

# the replicate blocks reproduce the variance model's terms, so they share its pieces
from harness.stats import (LEVEL, _document_factor, _moment_terms, _residuals, _weighted_sum, combine_terms,
                           interval_scope)


# -----------------------------------------------------------------------------
# fitted laws: point fits (least squares), in forms that stay finite at their logarithmic limits

def linear(x, a, b):
    return a + b * x


def power_law(k, a, c, beta):
    """
    E + B K^beta written as a + c (K^beta - 1) / beta, with a = E + B (the value at K = 1) and
    c = B beta (the slope in ln K at K = 1). Same curves, but this form stays finite as beta -> 0,
    where it becomes a + c ln K; in the E, B form a nearly logarithmic trend sends E and B off to
    -inf and +inf with meaningless intervals. E = a - c / beta and B = c / beta are reported only
    when beta's interval excludes 0.
    """
    return a + c * growth(np.log(k), beta)


def growth(log_k, beta):
    """
    (K^beta - 1) / beta from ln K, and its beta -> 0 limit ln K (expm1 keeps small beta accurate).
    Broadcasts: beta may be an array of exponents (one row per refitted replicate).
    """
    beta = np.asarray(beta, dtype=float)
    small = np.abs(beta) < 1e-9
    safe = np.where(small, 1.0, beta)
    return np.where(small, log_k, np.expm1(safe * log_k) / safe)


POSITION_C_BOUNDS = (0.0, 5.0)   # decay exponent c of the per-position law
POWER_BETA_BOUNDS = (-4.0, 4.0)  # exponent beta of the late-position power law in K


def log_decay(log_t, c):
    """(1 - t^-c) / c from ln t, and its c -> 0 limit ln t (expm1 keeps small c accurate);
    broadcasts like growth."""
    c = np.asarray(c, dtype=float)
    small = np.abs(c) < 1e-12
    safe = np.where(small, 1.0, c)
    return np.where(small, log_t, -np.expm1(-safe * log_t) / safe)


def position_law(t, x1, d, c):
    """
    XE(t) = a + b t^-c written as x1 - d (1 - t^-c) / c, with x1 = a + b (XE at t = 1) and d = b c
    (the fall per unit ln t at t = 1). Same curves for c > 0, but this form stays finite as c -> 0,
    where it becomes x1 - d ln t; in the a, b form a nearly logarithmic curve sends a and b off to
    -inf and +inf with meaningless intervals. The asymptote a = x1 - d / c exists only for c > 0
    and is reported only when c's interval excludes 0.
    """
    return x1 - d * log_decay(np.log(t), c)


def fit_law(f, x, y, p0, sigma=None, bounds=(-np.inf, np.inf)):
    """curve_fit with t-distribution 95% intervals from the covariance; never raises."""
    names = f.__code__.co_varnames[1:f.__code__.co_argcount]
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    dof = len(y) - len(p0)
    try:
        with warnings.catch_warnings():        # no covariance when dof = 0: we report no interval then
            warnings.simplefilter("ignore", optimize.OptimizeWarning)
            params, cov = optimize.curve_fit(f, x, y, p0=p0, sigma=sigma, bounds=bounds, maxfev=20000)
    except (RuntimeError, ValueError, TypeError) as e:
        return {"law": f.__name__, "error": str(e), "n_points": len(y)}
    se = np.sqrt(np.clip(np.diag(cov), 0, None)) if dof > 0 else np.full(len(params), np.nan)
    half = scipy_stats.t.ppf(0.975, dof) * se if dof > 0 else se
    rmse = float(np.sqrt(np.mean((y - f(x, *params)) ** 2)))
    return {"law": f.__name__, "n_points": len(y), "dof": dof, "rmse": rmse, "cov": cov if dof > 0 else None,
            "interval": "fit covariance",
            "params": {n: {"value": v, "se": s, "ci": [v - h, v + h]}
                       for n, v, s, h in zip(names, params, se, half)}}


def derived_parameter(fit, name, value, gradient, block_covariances=None):
    """
    Add a function of the fitted parameters with a delta-method t interval: from the per-source
    covariances of refitted replicates (Satterthwaite df) when given, else the fit covariance.
    """
    gradient = np.asarray(gradient, dtype=float)
    if block_covariances:
        variance, df = combine_terms([(source, block_df, sign, float(gradient @ cov @ gradient))
                                       for source, block_df, sign, cov in block_covariances])
    else:
        variance, df = float(gradient @ fit["cov"] @ gradient), fit["dof"]
    se = math.sqrt(max(float(variance), 0.0))
    half = float(scipy_stats.t.ppf(0.975, df)) * se
    fit["params"][name] = {"value": value, "se": se, "ci": [value - half, value + half], "derived": True}


# -----------------------------------------------------------------------------
# intervals for fitted laws: refit on replicates from each source of chance

def _seed_block(cells, i, rng, n_rep):
    """Cell i's seeds: multipliers on its per-seed estimates; replicate covariance V_seed."""
    per_seed = _moment_terms(cells[i].means, cells[i].weights)[0]
    n_seeds = len(per_seed)
    multipliers = rng.standard_normal((n_rep, n_seeds)) * math.sqrt(n_seeds / (n_seeds - 1)) / n_seeds
    deltas = np.zeros((n_rep, len(cells)) + per_seed.shape[1:])
    deltas[:, i] = np.tensordot(multipliers, per_seed - per_seed.mean(axis=0), axes=(1, 0))
    return f"seeds of cell {i}", n_seeds - 1, 1.0, deltas


def _document_block(cells, rng, n_rep):
    """The documents: one multiplier per document, shared by every cell that holds it; covariance V_doc."""
    all_ids = np.unique(np.concatenate([np.asarray(c.ids) for c in cells]))
    multipliers = rng.standard_normal((n_rep, len(all_ids)))
    deltas = np.zeros((n_rep, len(cells)) + cells[0].means.shape[2:])
    for i, cell in enumerate(cells):
        columns = cell.means.mean(axis=0)
        spread = columns - _weighted_sum(cell.weights, columns)[None]
        shared = multipliers[:, np.searchsorted(all_ids, cell.ids)] * cell.weights
        deltas[:, i] = math.sqrt(_document_factor(cell.weights)) * np.tensordot(shared, spread, axes=(1, 0))
    return "documents", min(len(c.weights) for c in cells) - 1, 1.0, deltas


def _interaction_block(cells, rng, n_rep):
    """The residual that the seed and document blocks both carry: covariance V_int, to subtract."""
    deltas = np.zeros((n_rep, len(cells)) + cells[0].means.shape[2:])
    for i, cell in enumerate(cells):
        n_seeds, n_docs = cell.means.shape[:2]
        per_seed = _moment_terms(cell.means, cell.weights)[0]
        weights = cell.weights.reshape((1, n_docs) + (1,) * (cell.means.ndim - 2))
        residual = _residuals(cell.means, per_seed) * weights
        multipliers = rng.standard_normal((n_rep, n_seeds, n_docs))
        scale = math.sqrt(_document_factor(cell.weights) / (n_seeds * (n_seeds - 1)))
        deltas[:, i] = scale * np.tensordot(multipliers, residual, axes=([1, 2], [0, 1]))
    return "interaction", min((len(c.means) - 1) * (len(c.weights) - 1) for c in cells), -1.0, deltas


def crossed_replicates(cells, n_rep=400, seed=0):
    """
    Perturbations of each cell's mean (a cell: one K's DocumentMeans, (S, D, *P)) for refitting,
    one block per term of the crossed variance: (covers, [(source, df, sign, deltas (n_rep,
    n_cells, *P))]). Gaussian multipliers (a wild bootstrap) scaled so that each block's replicate
    covariance is its moment term, across positions and cells too: per cell, its seeds; the
    documents; and the seed x document residual that both repeat, subtracted (sign -1). Which
    blocks there are follows interval_scope. Cells may hold different documents.
    """
    rng = np.random.default_rng(seed)
    covers = interval_scope([len(c.means) for c in cells], min(len(c.weights) for c in cells))
    blocks = []
    if covers in ("seeds and documents", "seeds only"):
        blocks += [_seed_block(cells, i, rng, n_rep) for i in range(len(cells))]
    if covers in ("seeds and documents", "documents only"):
        blocks.append(_document_block(cells, rng, n_rep))
    if covers == "seeds and documents":
        blocks.append(_interaction_block(cells, rng, n_rep))
    return covers, blocks


def resampled_intervals(fit, blocks, refit, covers, level=LEVEL):
    """
    Replace the covariance intervals of `fit` by intervals from refitting: `blocks` are
    [(source, df, sign, data replicates)], `refit(data)` -> (n_rep, n_params) in fit["params"]
    order. Per source, the covariance of the refitted parameters; per parameter, their signed sum
    (combine_terms) and a t interval. Returns [(source, df, sign, covariance)] for derived parameters.
    """
    block_covariances = []
    for source, block_df, sign, data in blocks:
        params = np.asarray(refit(data), dtype=float)
        params = params[np.all(np.isfinite(params), axis=1)]
        block_covariances.append((source, block_df, sign, np.atleast_2d(np.cov(params, rowvar=False))))
    n_replicates = len(blocks[0][3]) if blocks else 0
    fit["covers"], fit["interval"] = covers, f"refitted on {n_replicates} replicates per source"
    fit["cov"] = sum(sign * cov for _, _, sign, cov in block_covariances) if block_covariances else None
    for i, (name, p) in enumerate(fit["params"].items()):
        p["ci_fit_covariance"] = list(p["ci"])          # kept for comparison (fit_coverage)
        p["covers"] = covers                            # a parameter is an interval like any other
        if not block_covariances:
            p.update(se=math.nan, df=math.nan, ci=[math.nan, math.nan])
            continue
        variance, df = combine_terms([(src, bdf, sign, cov[i, i])
                                      for src, bdf, sign, cov in block_covariances])
        se, quantile = math.sqrt(max(float(variance), 0.0)), float(scipy_stats.t.ppf(0.5 + level / 2, df))
        p.update(se=se, df=float(df), ci=[p["value"] - quantile * se, p["value"] + quantile * se])
    return block_covariances


def profile_fit(x, y, basis, grid, weights=None):
    """
    Least squares of each row of y (R, n) on [1, basis(x, theta)] with theta on `grid` (sorted),
    refined by a parabola through the best grid point and its neighbours: (intercept, slope, theta),
    each (R,). The laws here are linear given their exponent, so this refits hundreds of replicates
    at once without an optimiser that can wander off.
    """
    y = np.atleast_2d(np.asarray(y, dtype=float))
    w = np.ones(y.shape[1]) if weights is None else np.asarray(weights, dtype=float)
    centre = float(np.average(y[0], weights=w))            # numerically kinder sums
    y = y - centre
    bases = basis(x[None, :], grid[:, None]).T                             # (n, G)
    s0, s1, s2 = w.sum(), w @ bases, w @ bases ** 2
    t0, t1 = y @ w, (y * w) @ bases                                         # (R,), (R, G)
    det = s0 * s2 - s1 ** 2
    slope = (s0 * t1 - s1 * t0[:, None]) / det
    intercept = (t0[:, None] - slope * s1) / s0
    sse = ((y ** 2) @ w)[:, None] - intercept * t0[:, None] - slope * t1
    best = np.clip(np.argmin(sse, axis=1), 1, len(grid) - 2)
    rows = np.arange(len(y))
    g0, g1, g2 = grid[best - 1], grid[best], grid[best + 1]
    f0, f1, f2 = sse[rows, best - 1], sse[rows, best], sse[rows, best + 1]
    curvature = (f0 - 2 * f1 + f2)
    with np.errstate(divide="ignore", invalid="ignore"):
        theta = np.where(curvature > 0, g1 + 0.5 * (g1 - g0) * (f0 - f2) / curvature, g1)
    theta = np.clip(theta, g0, g2)
    refined = basis(x[None, :], theta[:, None])                            # (R, n)
    s1, s2 = refined @ w, refined ** 2 @ w
    t1 = (y * refined) @ w
    slope = (s0 * t1 - s1 * t0) / (s0 * s2 - s1 ** 2)
    return (t0 - slope * s1) / s0 + centre, slope, theta


# exponent grids for refitting (uniform: profile_fit's parabola assumes it), refined between points
BETA_GRID = np.linspace(*POWER_BETA_BOUNDS, 161)
C_GRID = np.linspace(*POSITION_C_BOUNDS, 251)


def refit_linear_in_log_k(k, y):
    """Least-squares (a, b) of a + b ln K for each row of y (R, n): the refit of fit_linear_in_log_k."""
    design = np.stack([np.ones(len(k)), np.log(np.asarray(k, dtype=float))], axis=1)
    return np.atleast_2d(y) @ np.linalg.pinv(design).T


def refit_power_law(k, y):
    """(a, c, beta) of power_law for each row of y (R, n), beta within POWER_BETA_BOUNDS."""
    a, c, beta = profile_fit(np.log(np.asarray(k, dtype=float)), y, growth, BETA_GRID)
    return np.stack([a, c, beta], axis=1)


def refit_position_curve(curves, sigma=None):
    """(x1, d, c) of position_law for each row of curves (R, T), weighted by 1/sigma^2 like the fit."""
    log_t = np.log(np.arange(1, np.shape(curves)[-1] + 1))
    weights = None if sigma is None else 1 / np.asarray(sigma, dtype=float) ** 2
    x1, slope, c = profile_fit(log_t, curves, log_decay, C_GRID, weights)
    return np.stack([x1, -slope, c], axis=1)


def fit_linear_in_log_k(k, y, replicates=None):
    """
    XE = a + b ln K, least squares over run-level points. `replicates`: (covers, blocks) of
    crossed_replicates mapped onto the points (run_level_replicates); given, refitted intervals
    replace the covariance ones.
    """
    fit = fit_law(linear, np.log(k), y, p0=[float(np.mean(y)), 0.0])
    if replicates is not None and "params" in fit:
        covers, blocks = replicates
        resampled_intervals(fit, blocks, lambda data: refit_linear_in_log_k(k, data), covers)
    return fit


def fit_power_law(k, y, replicates=None):
    """
    XE(K) = E + B K^beta, fitted as power_law(K, a, c, beta) from a few starting exponents; with
    `replicates` (as in fit_linear_in_log_k) the intervals come from refitting. E and B are added,
    with delta-method intervals, only when beta's interval excludes 0 ("E_B": true): near beta = 0
    the law is a + c ln K and E, B have no finite estimate.
    """
    k, y = np.asarray(k, dtype=float), np.asarray(y, dtype=float)
    best = None
    for beta in (0.25, 0.5, 1.0, 2.0):
        design = np.stack([np.ones_like(k), growth(np.log(k), beta)], axis=1)
        (a, c), *_ = np.linalg.lstsq(design, y, rcond=None)
        fit = fit_law(power_law, k, y, p0=[a, c, beta], bounds=([-np.inf, -np.inf, POWER_BETA_BOUNDS[0]],
                                                                 [np.inf, np.inf, POWER_BETA_BOUNDS[1]]))
        if "error" not in fit and (best is None or fit["rmse"] < best["rmse"] - 1e-12):
            best = fit
    if best is None:
        return fit
    block_covariances = None
    if replicates is not None:
        covers, blocks = replicates
        block_covariances = resampled_intervals(best, blocks, lambda data: refit_power_law(k, data), covers)
    if best["cov"] is None:
        best["E_B"] = False
        return best
    a, c, beta = (best["params"][n]["value"] for n in ("a", "c", "beta"))
    lo, hi = best["params"]["beta"]["ci"]
    best["E_B"] = bool(np.isfinite(best["params"]["beta"]["se"]) and (lo > 0 or hi < 0))
    if best["E_B"]:
        derived_parameter(best, "E", a - c / beta, [1, -1 / beta, c / beta ** 2], block_covariances)
        derived_parameter(best, "B", c / beta, [0, 1 / beta, -c / beta ** 2], block_covariances)
    return best


def _best_position_fit(xe_t, sigma):
    """The least-squares position_law fit from a grid of starting exponents (x1, d by least squares)."""
    t = np.arange(1, len(xe_t) + 1)
    log_t = np.log(t)
    weight = np.ones_like(xe_t) if sigma is None else 1 / sigma
    best, best_chi2, fit = None, None, None
    for c in (0.0, 0.05, 0.2, 0.5, 1.0, 2.0, 4.0):
        design = np.stack([np.ones_like(log_t), -log_decay(log_t, c)], axis=1)
        (x1, d), *_ = np.linalg.lstsq(design * weight[:, None], xe_t * weight, rcond=None)
        fit = fit_law(position_law, t, xe_t, p0=[x1, d, c], sigma=sigma,
                      bounds=([-np.inf, -np.inf, POSITION_C_BOUNDS[0]],
                              [np.inf, np.inf, POSITION_C_BOUNDS[1]]))
        if "error" in fit:
            continue
        fitted = position_law(t, *(p["value"] for p in fit["params"].values()))
        chi2 = float(np.sum((weight * (xe_t - fitted)) ** 2))
        if best is None or chi2 < best_chi2 * (1 - 1e-9):
            best, best_chi2 = fit, chi2
    return best or fit


def fit_position_curve(xe_t, se_t=None, replicates=None):
    """
    XE(t) = x1 - d (1 - t^-c) / c over t = 1..len(xe_t) (position_law), weighted by the
    per-position standard errors, with c bounded to POSITION_C_BOUNDS. `replicates` (from
    curve_replicates), given, replace the covariance intervals by refitted ones.
    c's interval is clipped to its bounds. The asymptote a = x1 - d / c, with a delta-method
    interval, is added only when c's interval excludes 0 ("asymptote": true); otherwise the curve
    is logarithmic within the window as far as the data can tell.
    """
    xe_t = np.asarray(xe_t, dtype=float)
    usable = se_t is not None and np.all(np.isfinite(se_t)) and np.all(np.asarray(se_t) > 0)
    sigma = np.asarray(se_t, dtype=float) if usable else None
    best = _best_position_fit(xe_t, sigma)
    if "params" not in best:
        return best
    block_covariances = None
    if replicates is not None:
        covers, blocks = replicates
        block_covariances = resampled_intervals(best, blocks, lambda data: refit_position_curve(data, sigma),
                                                covers)
    lower, upper = POSITION_C_BOUNDS
    best["form"] = "XE(t) = x1 - d (1 - t^-c) / c; c -> 0: x1 - d ln t; asymptote a = x1 - d / c when c > 0"
    best["c_bounds"] = list(POSITION_C_BOUNDS)
    exponent = best["params"]["c"]
    best["asymptote"] = bool(best["cov"] is not None and np.isfinite(exponent["se"])
                             and exponent["ci"][0] > 0)
    exponent["ci"] = [float(np.clip(v, lower, upper)) if np.isfinite(v) else v for v in exponent["ci"]]
    exponent["at_bound"] = bool(min(abs(exponent["value"] - lower), abs(exponent["value"] - upper)) < 1e-6)
    x1, d, c = (best["params"][n]["value"] for n in ("x1", "d", "c"))
    if best["asymptote"]:
        derived_parameter(best, "a", x1 - d / c, [1, -1 / c, d / c ** 2], block_covariances)
    return best


def replicate_data(replicates, base, cell_index):
    """
    crossed_replicates' cell perturbations mapped onto a fit's data: point i of `base` moves with
    cell cell_index[i] (run-level points of K with that K's cell; a curve with its one cell).
    Least squares over run-level points equals least squares over cell means weighted by their
    seed counts, so moving each run's point by its cell's perturbation refits the same estimator.
    """
    covers, blocks = replicates
    base = np.asarray(base, dtype=float)
    return covers, [(source, df, sign, base[None] + deltas[:, cell_index])
                    for source, df, sign, deltas in blocks]


def run_level_replicates(cells, points, n_rep=400, seed=0):
    """
    Replicates for a law fitted to run-level points (one per seed, cells in order): `cells` are
    DocumentMeans of one scalar statistic per K (S, D); `points` the runs' values in that order.
    """
    cell_of_run = np.repeat(np.arange(len(cells)), [len(c.means) for c in cells])
    return replicate_data(crossed_replicates(cells, n_rep, seed), points, cell_of_run)


def curve_replicates(cell, curve, n_rep=400, seed=0):
    """Replicates for a law fitted to one cell's mean curve (DocumentMeans (S, D, T); curve (T,))."""
    return replicate_data(crossed_replicates([cell], n_rep, seed), curve, 0)


def law_explanation(law):
    """A law's docstring as one paragraph: the single explanation of its form, for code and report alike."""
    return " ".join(inspect.cleandoc(law.__doc__).split())
