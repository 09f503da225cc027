"""
stats.py: the chosen intervals hold 95% by simulation in every regime of the design, say what
they cover, keep the estimates; Holm, the trend test, and the fitted laws with refitted intervals.
"""
import math
import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from harness import simulation, laws, stats  # noqa: E402
from harness.data import BLOCK

T = np.arange(1, BLOCK + 1)


# -----------------------------------------------------------------------------
# coverage of the chosen interval: the acceptance test

# 3000 simulated experiments per check. The number covering is binomial(3000, coverage). For an
# exactly 0.95 method, falling outside [0.93, 0.97] (fewer than 2790 or more than 2910 covering)
# has probability < 1e-6 (at 700 experiments it would be 1.2%, at 1000 0.3%: scipy.stats.binom).
# The chosen method is slightly conservative where seeds dominate a difference (0.962 in the
# 10000-experiment benchmark: Welch-Satterthwaite df run a little low), and a 0.962 method falls
# outside with probability 0.8%; 0.94 with 1.1%.
COVERAGE_EXPERIMENTS = 3000
# Where the method sits at 95% (documents matter), 10,000 experiments pin its coverage to
# [0.94, 0.96] (Monte Carlo sd 0.002): intervals 10% too wide (0.97) or too narrow fail there.
PINNED = ("document-dominated", "mixed")


@pytest.mark.parametrize("regime", list(simulation.REGIMES) + list(simulation.UNEQUAL))
def test_chosen_interval_holds_95_percent_at_three_seeds(regime):
    regimes = {**simulation.REGIMES, **simulation.UNEQUAL}
    experiments, chunk, seed, band = ((10_000, 2000, 12, (0.94, 0.96)) if regime in PINNED else
                                      (COVERAGE_EXPERIMENTS, 1000, 11, (0.93, 0.97)))
    rows = simulation.coverage_table(methods={simulation.CHOSEN: simulation.METHODS[simulation.CHOSEN]},
                                     regimes={regime: regimes[regime]}, seed_counts=(3,),
                                     replicates=experiments, chunk=chunk, seed=seed)
    assert {r["statistic"] for r in rows} == {"mean", "paired difference"}
    for r in rows:
        assert band[0] <= r["coverage"] <= band[1], r


NOISY = {"n_docs": 60, "windows_per_doc": 2, "document_sd": 0.3, "window_sd": 1.0}   # seed x document noise


@pytest.mark.parametrize("regime, design", [(r, simulation.DESIGN) for r in simulation.REGIMES] +
                         [("mixed", NOISY)])
def test_the_crossed_variance_is_unbiased_for_the_estimates_own_variance(regime, design):
    """Over 4,000 simulated experiments the mean estimated variance (stats.crossed_variance) of a
    cell's mean and of a paired difference equals the variance of the estimates themselves
    (within 6%: Monte Carlo error ~2%): a term dropped or counted twice shows here. With noisy
    windows (two per document) the seed x document interaction is large: dropping its
    correction would count it twice."""
    rng = np.random.default_rng(21)
    a, b, docs, _ = simulation.simulate_pair(simulation.REGIMES[regime], 3, 4000, rng, design)
    for sides in ([(a, 1.0)], [(a, 1.0), (b, -1.0)]):
        cells = [(stats.document_means(values, docs), sign) for values, sign in sides]
        v = stats.crossed_variance([(cell.means, sign) for cell, sign in cells], cells[0][0].weights)
        assert np.mean(v["variance"]) == pytest.approx(np.var(v["estimate"], ddof=1), rel=0.06), len(sides)


def test_document_term_is_unbiased_for_unequal_documents():
    """E[f sum_d w_d^2 (c_d - c)^2] = var_doc sum_d w_d^2 for any shares w: the exact expectation
    over many draws of the document effects, for one long document beside many short ones."""
    rng = np.random.default_rng(5)
    weights = np.array([0.4] + [0.6 / 30] * 30)
    columns = rng.normal(0, 0.3, (200_000, len(weights))).T           # (D, draws)
    estimated = stats._document_term(columns, weights)
    truth = 0.3 ** 2 * np.sum(weights ** 2)
    assert estimated.mean() == pytest.approx(truth, rel=0.01)
    classical = len(weights) / (len(weights) - 1) * np.sum(weights[:, None] ** 2 *
                                                          (columns - weights @ columns) ** 2, axis=0)
    assert classical.mean() < 0.5 * truth                              # what D / (D - 1) gave
    equal = np.full(7, 1 / 7)
    assert stats._document_factor(equal) == pytest.approx(7 / 6)       # the classical factor


def test_previous_bootstrap_undercovers_where_seeds_dominate():
    """The issue's finding: resampling 3 seeds misses the seed variance of a paired difference."""
    rows = simulation.coverage_table(methods={"bootstrap": simulation.crossed_bootstrap_bounds},
                                regimes={"seed-dominated": simulation.REGIMES["seed-dominated"]}, seed_counts=(3,),
                                replicates=600, n_boot=400, statistics=("paired difference",), chunk=300, seed=3)
    assert rows[0]["coverage"] < 0.88, rows


def test_coverage_table_markdown():
    rows = simulation.coverage_table(regimes={"mixed": simulation.REGIMES["mixed"]}, seed_counts=(2,),
                                     replicates=40,
                                n_boot=50, chunk=40)
    text = simulation.markdown_table(rows)
    assert text.count("\n") == 3 and "| mixed | paired difference | 2 |" in text
    assert all(name in text.splitlines()[0] for name in simulation.METHODS)


# -----------------------------------------------------------------------------
# what an interval covers; estimates unchanged

def crossed(rng, n_seeds, n_docs, per_doc=4, seed_sd=0.05, doc_sd=0.3, noise=0.2, mu=2.0):
    docs = np.repeat(np.arange(n_docs), per_doc)
    values = (mu + rng.normal(0, seed_sd, (n_seeds, 1)) + rng.normal(0, doc_sd, n_docs)[docs]
              + rng.normal(0, noise, (n_seeds, len(docs))))
    return values, docs


def test_interval_scope():
    assert stats.interval_scope([3], 60) == "seeds and documents"
    assert stats.interval_scope([3, 1], 60) == "documents only"
    assert stats.interval_scope([2, 2], 1) == "seeds only"
    assert stats.interval_scope([1], 1) == "n/a"


def test_one_seed_interval_covers_documents_only():
    rng = np.random.default_rng(0)
    values, docs = crossed(rng, 1, 20)
    result = stats.crossed_mean(values, docs)
    assert result["covers"] == "documents only" and result["df"] == 19
    assert result["ci"][0] < result["value"] < result["ci"][1]
    # conditional on the one training run it holds 95%: no seed variation, coverage of mu
    rows = simulation.coverage_table(methods={"t": simulation.crossed_t_bounds}, seed_counts=(1,), replicates=1000,
                                regimes={"no seed effect": {"seed_sd": 0.0, "interaction_sd": 0.05}}, seed=5)
    assert all(0.92 <= r["coverage"] <= 0.98 for r in rows), rows
    # but it does not cover what a new seed would give: where seeds dominate, a difference misses often
    rows = simulation.coverage_table(methods={"t": simulation.crossed_t_bounds}, seed_counts=(1,), replicates=1000,
                                regimes={"seed-dominated": simulation.REGIMES["seed-dominated"]},
                                statistics=("paired difference",), seed=5)
    assert rows[0]["coverage"] < 0.6, rows


def test_one_document_covers_seeds_only_and_one_of_each_is_not_an_interval():
    rng = np.random.default_rng(1)
    values, docs = crossed(rng, 3, 1, per_doc=30)
    result = stats.crossed_mean(values, docs)
    assert result["covers"] == "seeds only" and result["df"] == pytest.approx(2)
    assert result["ci"][1] - result["ci"][0] > 0
    single = stats.crossed_paired_difference(values[:1], values[1:2] + 0.1, docs)
    assert single["covers"] == "n/a" and all(math.isnan(x) for x in single["ci"]) and math.isnan(single["p_value"])
    assert single["value"] == pytest.approx(float(values[0].mean() - values[1].mean() - 0.1))


def test_estimates_are_the_plain_means():
    rng = np.random.default_rng(2)
    docs = np.repeat(np.arange(9), [1, 2, 3, 4, 5, 6, 7, 8, 9])          # unequal windows per document
    a, b = rng.normal(size=(3, len(docs), 5)), rng.normal(size=(2, len(docs), 5))
    np.testing.assert_allclose(stats.crossed_mean(a, docs)["value"], a.mean(axis=(0, 1)))
    np.testing.assert_allclose(stats.crossed_paired_difference(a, b, docs)["value"],
                               a.mean(axis=(0, 1)) - b.mean(axis=(0, 1)))
    np.testing.assert_allclose(stats.crossed_mean(a, docs)["value"], simulation.bootstrap_mean(a, docs, 10)[0])
    one = stats.crossed_mean(a[..., 2], docs)                            # elementwise over trailing axes
    assert one["value"] == pytest.approx(stats.crossed_mean(a, docs)["value"][2])
    assert one["ci"][0] == pytest.approx(stats.crossed_mean(a, docs)["ci"][0][2])
    picked = stats.interval_component(stats.crossed_mean(a, docs), 2)
    assert picked["covers"] == one["covers"] and picked["ci"] == pytest.approx(one["ci"])
    assert (picked["value"], picked["se"], picked["df"]) == pytest.approx((one["value"], one["se"], one["df"]))


def test_variance_is_the_classical_crossed_anova_estimate():
    """Equal windows per document: V = MS_seeds / (S D) + MS_docs / (S D) - MS_residual / (S D), df by
    Satterthwaite."""
    rng = np.random.default_rng(3)
    values, docs = crossed(rng, 4, 15, per_doc=1)
    n_seeds, n_docs = values.shape
    rows, columns, grand = values.mean(1), values.mean(0), values.mean()
    ms_seeds = n_docs * np.sum((rows - grand) ** 2) / (n_seeds - 1)
    ms_docs = n_seeds * np.sum((columns - grand) ** 2) / (n_docs - 1)
    residual = values - rows[:, None] - columns[None] + grand
    ms_residual = np.sum(residual ** 2) / ((n_seeds - 1) * (n_docs - 1))
    variance = (ms_seeds + ms_docs - ms_residual) / (n_seeds * n_docs)
    pieces = [(ms_seeds, n_seeds - 1), (ms_docs, n_docs - 1), (ms_residual, (n_seeds - 1) * (n_docs - 1))]
    df = (ms_seeds + ms_docs - ms_residual) ** 2 / sum(ms ** 2 / d for ms, d in pieces)
    result = stats.crossed_mean(values, docs)
    assert result["se"] ** 2 == pytest.approx(variance) and result["df"] == pytest.approx(df)


def test_paired_difference_cancels_documents_and_tests():
    rng = np.random.default_rng(4)
    docs = np.repeat(np.arange(20), 4)
    doc_effect = rng.normal(0, 0.5, 20)[docs]                         # shared by both K: pairing cancels it
    base, shifted = (mu + doc_effect + rng.normal(0, 0.01, (3, 1)) + rng.normal(0, 0.2, (3, len(docs)))
                     for mu in (2.0, 2.2))
    result = stats.crossed_paired_difference(shifted, base, docs)
    assert result["ci"][0] < 0.2 < result["ci"][1] and result["p_value"] < 0.01
    unpaired = stats.crossed_mean(shifted, docs)["se"] ** 2 + stats.crossed_mean(base, docs)["se"] ** 2
    assert result["se"] ** 2 < 0.2 * unpaired
    null = stats.crossed_paired_difference(base + rng.normal(0, 0.2, base.shape), base, docs)
    assert null["p_value"] > 0.01 and null["ci"][0] < 0 < null["ci"][1]


# -----------------------------------------------------------------------------
# Holm, the trend test

def test_holm_matches_hand_computation():
    # sorted 0.005, 0.01, 0.03, 0.04 -> x4, x3, x2, x1 = 0.02, 0.03, 0.06, 0.04 -> running max
    np.testing.assert_allclose(stats.holm([0.01, 0.04, 0.03, 0.005]), [0.03, 0.06, 0.06, 0.02])
    np.testing.assert_allclose(stats.holm([0.5, 0.9]), [1.0, 1.0])
    assert stats.holm([]).shape == (0,)


def test_trend_test_and_its_single_seed_flag():
    k = np.repeat([1, 2, 3, 4, 5], 3)
    y = 2.0 + 0.1 * k + np.random.default_rng(5).normal(0, 0.01, len(k))
    trend = stats.trend_test(k, y)
    assert trend["p_value"] < 1e-6 and trend["slope_ci"][0] < 0.1 < trend["slope_ci"][1]
    assert trend["spearman_rho"] > 0.9 and trend["single_seed_ks"] == []
    assert stats.trend_test([1, 1, 1], [1, 2, 3]) is None
    assert stats.trend_test([1, 1, 2, 3], [1.0, 1.1, 2.0, 3.1])["single_seed_ks"] == [2, 3]


# -----------------------------------------------------------------------------
# fitted laws: point fits recover known parameters

def check_params(fit, truth, rtol):
    for name, value in truth.items():
        p = fit["params"][name]
        assert p["value"] == pytest.approx(value, rel=rtol), (name, p)
        assert p["ci"][0] < p["value"] < p["ci"][1], (name, p)
        assert abs(p["value"] - value) < 4 * p["se"], (name, p)        # the interval is honest too


def test_fits_recover_known_parameters():
    rng = np.random.default_rng(4)
    k = np.repeat(np.arange(1, 6), 3).astype(float)
    late = 2.0 + 0.1 * k ** 0.6 + rng.normal(0, 0.002, len(k))            # E + B K^beta
    fit = laws.fit_power_law(k, late)
    check_params(fit, {"E": 2.0, "B": 0.1, "beta": 0.6, "a": 2.1, "c": 0.06}, 0.25)
    assert fit["E_B"]
    np.testing.assert_allclose(laws.power_law(k, 2.1, 0.06, 0.6), 2.0 + 0.1 * k ** 0.6)
    # a logarithmic trend is the beta -> 0 end of the family: finite parameters, beta near 0, no E, B
    fit = laws.fit_power_law(k, 3.0 + 0.2 * np.log(k) + rng.normal(0, 0.002, len(k)))
    check_params(fit, {"a": 3.0, "c": 0.2}, 0.05)
    assert abs(fit["params"]["beta"]["value"]) < 0.2
    assert not fit["E_B"] and "E" not in fit["params"] and "B" not in fit["params"]
    xe = 3.0 + 0.2 * np.log(k) + rng.normal(0, 0.01, len(k))
    check_params(laws.fit_linear_in_log_k(k, xe), {"a": 3.0, "b": 0.2}, 0.1)
    assert laws.fit_law(laws.linear, [1, 2], [1, 2], p0=[0, 1])["params"]["a"]["se"] != 0   # dof 0: no crash


def test_law_parametrizations():
    # x1 - d (1 - t^-c) / c is a + b t^-c with x1 = a + b, d = b c, and x1 - d ln t at c = 0, continuously
    np.testing.assert_allclose(laws.position_law(T, 3.5, 1.4, 0.7), 1.5 + 2.0 * T ** -0.7)
    np.testing.assert_allclose(laws.position_law(T, 3.0, 0.25, 0.0), 3.0 - 0.25 * np.log(T))
    np.testing.assert_allclose(laws.position_law(T, 3.0, 0.25, 1e-7), 3.0 - 0.25 * np.log(T), atol=1e-6)
    np.testing.assert_allclose(laws.position_law(T, 3.0, 0.25, 1e-13), 3.0 - 0.25 * np.log(T))
    np.testing.assert_allclose(laws.power_law(np.arange(1, 6), 2.0, 0.3, 0.0), 2.0 + 0.3 * np.log(np.arange(1, 6)))
    assert "x1 - d (1 - t^-c) / c" in laws.law_explanation(laws.position_law)


# -----------------------------------------------------------------------------
# fitted laws: intervals from refitting

def test_refits_reproduce_the_point_fits():
    rng = np.random.default_rng(6)
    k = np.repeat(np.arange(1, 6), 3).astype(float)
    late = 2.0 + 0.1 * k ** 0.6 + rng.normal(0, 0.01, len(k))
    fit = laws.fit_power_law(k, late)
    refit = laws.refit_power_law(k, late[None])[0]
    np.testing.assert_allclose(refit, [fit["params"][n]["value"] for n in ("a", "c", "beta")],
                               rtol=2e-3, atol=2e-4)
    curve = 1.5 + 2.0 * T ** -0.7 + rng.normal(0, 0.01, BLOCK)
    sigma = np.full(BLOCK, 0.01) * (1 + T / 100)
    fit = laws.fit_position_curve(curve, sigma)
    refit = laws.refit_position_curve(curve[None], sigma)[0]
    np.testing.assert_allclose(refit, [fit["params"][n]["value"] for n in ("x1", "d", "c")], rtol=2e-3)
    lnk = laws.refit_linear_in_log_k(k, late[None])[0]
    np.testing.assert_allclose(lnk, [laws.fit_linear_in_log_k(k, late)["params"][n]["value"] for n in "ab"])


def test_replicates_reproduce_the_interval_variance():
    """For a mean, the per-source replicate variances add up to the crossed moment variance."""
    rng = np.random.default_rng(7)
    values, docs = crossed(rng, 3, 30, seed_sd=0.1, noise=0.5)
    cell = stats.document_means(values, docs)
    covers, blocks = laws.crossed_replicates([cell], n_rep=40000, seed=1)
    assert covers == "seeds and documents"
    assert [(source, df, sign) for source, df, sign, _ in blocks] == [
        ("seeds of cell 0", 2, 1.0), ("documents", 29, 1.0), ("interaction", 58, -1.0)]
    variance, df = stats.combine_terms([(source, df, sign, deltas[:, 0].var())
                                        for source, df, sign, deltas in blocks])
    exact = stats.crossed_mean(values, docs)
    assert variance == pytest.approx(exact["se"] ** 2, rel=0.03) and df == pytest.approx(exact["df"], rel=0.1)
    # across positions too: the replicates' variance of a contrast between two positions is the
    # crossed variance of that contrast (a per-position rescaling would get this wrong)
    curves = values[..., None] + rng.normal(0, [0.1, 0.5], (3, len(docs), 2))
    covers, blocks = laws.crossed_replicates([stats.document_means(curves, docs)], n_rep=40000, seed=2)
    contrast = [(source, df, sign, (deltas[:, 0, 0] - deltas[:, 0, 1]).var())
                for source, df, sign, deltas in blocks]
    exact = stats.crossed_mean(curves[..., 0] - curves[..., 1], docs)
    assert stats.combine_terms(contrast)[0] == pytest.approx(exact["se"] ** 2, rel=0.05)
    covers, blocks = laws.crossed_replicates([stats.document_means(values[:1], docs)], n_rep=40000, seed=1)
    assert covers == "documents only" and len(blocks) == 1
    assert blocks[0][3][:, 0].var() == pytest.approx(stats.crossed_mean(values[:1], docs)["se"] ** 2, rel=0.03)


def test_refitted_intervals_scope_and_derived_parameters():
    rng = np.random.default_rng(8)
    cells, docs = simulation.simulate_sweep(simulation.REGIMES["mixed"], 3, rng)
    values, curve_docs = simulation.simulate_curves(simulation.REGIMES["mixed"], 2, rng)
    fits = simulation.fitted_laws(cells, docs, (values, curve_docs), n_rep=200, seed=0)
    for law, fit in fits.items():
        assert fit["covers"] == "seeds and documents" and fit["interval"].startswith("refitted"), law
        for name, p in fit["params"].items():
            assert np.isfinite(p["se"]) and p["ci"][0] <= p["value"] <= p["ci"][1], (law, name, p)
    position = fits["position"]
    assert position["asymptote"] and position["params"]["a"]["derived"]
    assert position["params"]["a"]["ci"][0] < 1.5 < position["params"]["a"]["ci"][1]
    # one seed in one cell: every fit interval is over documents only
    one_seed = {k: (v[:1] if k == 3 else v) for k, v in cells.items()}
    fits = simulation.fitted_laws(one_seed, docs, (values[:1], curve_docs), n_rep=100, seed=0)
    assert {fit["covers"] for fit in fits.values()} == {"documents only"}


def test_refitted_ln_k_interval_covers():
    """The refitted interval of the ln K law's slope holds its level (the cheap law; bench.py
    --what=coverage --fits=True has all)."""
    rng = np.random.default_rng(9)
    hits = []
    for i in range(300):
        cells, docs = simulation.simulate_sweep(simulation.REGIMES["mixed"], 3, rng, ks=(1, 2, 4))
        ks = sorted(cells)
        points = np.concatenate([cells[k][..., 0].mean(axis=1) for k in ks])
        replicates = laws.run_level_replicates([stats.document_means(cells[k][..., 0], docs) for k in ks],
                                                points, n_rep=200, seed=i)
        fit = laws.fit_linear_in_log_k(np.repeat(ks, 3), points, replicates)
        low, high = fit["params"]["b"]["ci"]
        hits.append(low <= simulation.LAWS_TRUTH["lnK"]["b"] <= high)
    # binomial(300, 0.95): outside [0.90, 0.99] with probability < 0.1%
    assert 0.90 <= np.mean(hits) <= 0.99, np.mean(hits)


def test_refitted_power_and_position_law_intervals_cover():
    """The refitted intervals of the late-XE power law and of the position law hold their level
    for every parameter (the fit covariance covers the level parameters 20-50% of the time:
    BENCHMARKS.md). 400 simulated sweeps: 0.95 +- 0.011; d and c of the position law over-cover
    a little by design (Satterthwaite gives window noise S - 1 degrees of freedom)."""
    rows = simulation.fit_coverage(regimes={"mixed": simulation.REGIMES["mixed"]}, replicates=400, n_rep=200,
                                   seed=3)
    checked = [r for r in rows if r["law"] in ("power", "position")]
    assert {(r["law"], r["parameter"]) for r in checked} == {("power", "a"), ("power", "c"), ("power", "beta"),
                                                            ("position", "x1"), ("position", "d"),
                                                            ("position", "c")}
    for r in checked:
        assert 0.91 <= r["coverage_refit"] <= 0.995, r
