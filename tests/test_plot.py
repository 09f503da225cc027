"""
plot.py: the statistics recover what they should on simulated data, and the whole report is
built from fake run folders written in the exact formats train.py and evaluate.py produce.
"""
import csv
import json
import math
import os
import re
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import plot  # noqa: E402
from common import BLOCK, UserError, write_json  # noqa: E402

T = np.arange(1, BLOCK + 1)


# -----------------------------------------------------------------------------
# fake runs: K = 1..3, 2 seeds, synthetic (bayes/oracle), 60 windows over 12 docs per category

def make_dataset(root, components, budget=12_000):
    data_dir = os.path.join(root, "data", "synthetic")
    rows = [{"category": c, "split": split, "docs": docs, "tokens": tokens,
             "mean_tokens_per_doc": tokens / docs}
            for i, c in enumerate(components)
            for split, docs, tokens in (("train", 40, 20_000 + 1000 * i), ("val", 4, 2000), ("test", 12, 9000))]
    write_json(os.path.join(data_dir, "stats.json"),
               {"rows": rows, "top5_smallest_first": components[:5], "default_order": components[:5],
                "default_budget": budget})
    return data_dir


def fake_losses(rng, category_index, k, in_mixture, n_docs=12, n_windows=60):
    """Per-window losses with a shared document effect, an identification bump of ln K spread over
    early positions, a K^0.5 data-scarcity term, and per-run noise."""
    docs = np.repeat(np.arange(n_docs), n_windows // n_docs)
    doc_effect = np.random.default_rng(100 + category_index).normal(0, 0.2, n_docs)[docs]  # same every run
    entropy = 1.5 + 0.1 * category_index
    bump = np.exp(-T / 4.0)
    identification = math.log(k) * bump / bump.sum() if in_mixture else 0.0
    oracle = entropy + 0.8 * T ** -0.5 + doc_effect[:, None]
    bayes = oracle + identification
    model = bayes + 0.3 * T ** -0.5 + 0.05 * k ** 0.5 + (0 if in_mixture else 1.0)
    model = model + rng.normal(0, 0.1, model.shape)
    return docs, model.astype(np.float32), bayes, oracle


def make_run(out_dir, data_dir, name, k, seed, all_components, budget=12_000, epochs=4, synthetic=True,
             size="4L-256d", n_params=1_000_000, done_tokens=None):
    folder = os.path.join(out_dir, name)
    components = all_components[:k]
    rng = np.random.default_rng([k, seed])
    categories, arrays = {}, {}
    for i, cat in enumerate(all_components):
        docs, model, bayes, oracle = fake_losses(rng, i, k, cat in components)
        entry = {"n_windows": len(docs), "n_docs": len(np.unique(docs)), "in_mixture": cat in components}
        for key, values in (("", model), ("bayes", bayes), ("oracle", oracle)):
            if key and not synthetic:
                continue
            block = {"xe_mean": float(values.mean()), "xe_mean_bits": float(values.mean() / math.log(2)),
                     "xe_t": values.mean(0).tolist()}
            entry.update(block) if not key else entry.update({key: block})
            arrays[f"{key or 'model'}:{cat}"] = values.astype(np.float32 if not key else np.float64)
        arrays[f"doc:{cat}"] = docs.astype(np.int64)
        categories[cat] = entry
    per_component = budget // k
    trained = budget * epochs if done_tokens is None else done_tokens
    ev = {"run": name, "dataset": "synthetic", "source": "synthetic" if synthetic else "arxiv", "k": k,
          "components": components, "weights": [1 / k] * k, "seed": seed, "model_size": size,
          "n_params": n_params, "token_budget": budget, "tokens_trained": trained,
          "evalset": {"path": "x", "sha": "abc", "seed": 0, "n_windows": 60}, "categories": categories}
    if synthetic:
        ev["entropy_rate"] = {c: 1.5 + 0.1 * i for i, c in enumerate(all_components)}
    config = {"config": {"data_dir": data_dir, "components": components, "k": k, "token_budget": budget,
                         "seed": seed, "n_layer": 4, "n_head": 4, "n_embd": 256, "epochs": epochs, "run_name": name},
              "model": {"n_params": n_params, "size": size, "flops_per_token": 6e6},
              "mixture": {"components": components, "weights": [1 / k] * k,
                          "tokens": {c: per_component for c in components}, "docs": {c: 5 for c in components},
                          "budget": budget},
              "schedule": {"steps": 100, "steps_per_epoch": 25, "epochs": epochs},
              "dataset": {"name": "synthetic", "source": "synthetic", "dir": data_dir},
              "provenance": {}, "device": "cpu"}
    write_json(os.path.join(folder, "config.json"), config)
    write_json(os.path.join(folder, "done"), {"steps": 100, "tokens": trained,
                                              "tokens_per_component": {c: per_component * epochs for c in components},
                                              "final_val_loss": 2.0, "elapsed_s": 1.0})
    with open(os.path.join(folder, "log.jsonl"), "w") as f:
        for step in range(0, 101, 20):
            f.write(json.dumps({"kind": "train", "step": step, "epoch": step // 25, "loss": 4 - step / 50,
                                "lr": 1e-3, "tokens": step * 480, "tok_per_s": 1e4, "mfu": 0.1, "elapsed": step}) + "\n")
            f.write(json.dumps({"kind": "val", "step": step, "tokens": step * 480, "val_loss": 4.1 - step / 50}) + "\n")
        f.write('{"kind": "train", "step": 10')                       # half-written last line
    write_json(os.path.join(folder, "eval.json"), ev)
    np.savez(os.path.join(folder, "eval.npz"), **arrays)
    return folder


@pytest.fixture
def sweep(tmp_path):
    components = [f"chain{i}" for i in range(4)]
    data_dir = make_dataset(str(tmp_path), components)
    out_dir = str(tmp_path / "out")
    for k in (1, 2, 3):
        for seed in (0, 1):
            make_run(out_dir, data_dir, f"k{k}-s{seed}", k, seed, components)
    os.makedirs(os.path.join(out_dir, "k4-s0"))                     # started, not evaluated
    write_json(os.path.join(out_dir, "k4-s0", "config.json"), {"config": {}})
    return {"out": out_dir, "results": str(tmp_path / "results"), "data": data_dir, "components": components}


def run_plot(sweep, *extra):
    plot.main([f"--out={sweep['out']}", f"--results={sweep['results']}", "--n_boot=300", *extra])
    with open(os.path.join(sweep["results"], "REPORT.md")) as f:
        return f.read()


# -----------------------------------------------------------------------------
# statistics

def simulate_crossed(rng, mu=2.0, n_seeds=4, n_docs=20, per_doc=3):
    """Crossed design as in the harness: every seed scores the same documents."""
    docs = np.repeat(np.arange(n_docs), per_doc)
    doc_effect = rng.normal(0, 0.3, n_docs)[docs]
    seed_effect = rng.normal(0, 0.05, n_seeds)[:, None]
    return mu + seed_effect + doc_effect[None, :] + rng.normal(0, 0.2, (n_seeds, len(docs))), docs


def per_seed_document_bootstrap(values, docs, n_boot, rng):
    """The naive alternative: draw documents afresh for every drawn seed."""
    n_seeds, n_docs = values.shape[0], docs.max() + 1
    doc_means = np.stack([np.bincount(docs, v, n_docs) / np.bincount(docs) for v in values])  # (S, D)
    seeds = rng.integers(0, n_seeds, (n_boot, n_seeds))
    picked = rng.integers(0, n_docs, (n_boot, n_seeds, n_docs))
    return doc_means[seeds[:, :, None], picked].mean(axis=(1, 2))


def test_bootstrap_coverage_near_nominal():
    rng = np.random.default_rng(0)
    hits, hits_naive = [], []
    for rep in range(200):
        values, docs = simulate_crossed(rng)
        est, reps = plot.bootstrap_mean(values, docs, n_boot=400, seed=rep)
        lo, hi = plot.interval(est, reps)["ci"]
        hits.append(lo <= 2.0 <= hi)
        lo, hi = np.percentile(per_seed_document_bootstrap(values, docs, 400, rng), [2.5, 97.5])
        hits_naive.append(lo <= 2.0 <= hi)
    assert 0.88 <= np.mean(hits) <= 0.99, np.mean(hits)
    # drawing documents afresh per seed ignores that the seeds share them: intervals far too narrow
    assert np.mean(hits_naive) < np.mean(hits) - 0.1, (np.mean(hits_naive), np.mean(hits))


def test_bootstrap_shapes_single_seed_and_positions():
    rng = np.random.default_rng(1)
    values, docs = simulate_crossed(rng, n_seeds=1)
    est, reps = plot.bootstrap_mean(values, docs, n_boot=200)
    assert np.shape(est) == () and reps.shape == (200,) and reps.std() > 0
    assert est == pytest.approx(values.mean())
    curves = rng.normal(size=(2, 60, BLOCK))
    est, reps = plot.bootstrap_mean(curves, np.repeat(np.arange(12), 5), n_boot=50)
    assert est.shape == (BLOCK,) and reps.shape == (50, BLOCK)
    np.testing.assert_allclose(est, curves.mean(axis=(0, 1)))


def test_paired_difference_recovers_shift_and_beats_unpaired_width():
    rng = np.random.default_rng(2)
    base, docs = simulate_crossed(rng, n_seeds=3)
    shifted = base[::-1] + 0.2 + rng.normal(0, 0.02, base.shape)      # same windows, +0.2 nats
    est, reps = plot.bootstrap_paired_difference(shifted, base, docs, n_boot=1000)
    ci = plot.interval(est, reps)["ci"]
    assert ci[0] < 0.2 < ci[1] and est == pytest.approx(0.2, abs=0.05)
    assert plot.bootstrap_p_value(reps) < 0.01
    _, reps_a = plot.bootstrap_mean(shifted, docs, n_boot=1000)
    _, reps_b = plot.bootstrap_mean(base, docs, n_boot=1000, seed=9)
    assert reps.std() < 0.5 * (reps_a - reps_b).std()                 # pairing removes document variance
    null = plot.bootstrap_p_value(rng.normal(0, 1, 2000))
    assert null > 0.2


def test_holm_matches_hand_computation():
    # sorted 0.005, 0.01, 0.03, 0.04 -> x4, x3, x2, x1 = 0.02, 0.03, 0.06, 0.04 -> running max
    np.testing.assert_allclose(plot.holm([0.01, 0.04, 0.03, 0.005]), [0.03, 0.06, 0.06, 0.02])
    np.testing.assert_allclose(plot.holm([0.5, 0.9]), [1.0, 1.0])
    assert plot.holm([]).shape == (0,)


def test_trend_test():
    k = np.repeat([1, 2, 3, 4, 5], 3)
    y = 2.0 + 0.1 * k + np.random.default_rng(3).normal(0, 0.01, len(k))
    trend = plot.trend_test(k, y)
    assert trend["p_value"] < 1e-6 and trend["slope_ci"][0] < 0.1 < trend["slope_ci"][1]
    assert trend["spearman_rho"] > 0.9
    assert plot.trend_test([1, 1, 1], [1, 2, 3]) is None


def check_params(fit, truth, rtol):
    for name, value in truth.items():
        p = fit["params"][name]
        assert p["value"] == pytest.approx(value, rel=rtol), (name, p)
        assert p["ci95"][0] < p["value"] < p["ci95"][1], (name, p)
        assert abs(p["value"] - value) < 4 * p["se"], (name, p)        # the interval is honest too


def test_fits_recover_known_parameters():
    rng = np.random.default_rng(4)
    k = np.repeat(np.arange(1, 6), 3).astype(float)
    late = 2.0 + 0.1 * k ** 0.6 + rng.normal(0, 0.002, len(k))            # E + B K^beta
    fit = plot.fit_power_law(k, late)
    check_params(fit, {"E": 2.0, "B": 0.1, "beta": 0.6, "a": 2.1, "c": 0.06}, 0.25)
    assert fit["E_B"]
    np.testing.assert_allclose(plot.power_law(k, 2.1, 0.06, 0.6), 2.0 + 0.1 * k ** 0.6)
    # a logarithmic trend is the beta -> 0 end of the family: finite parameters, beta near 0, and no
    # E, B (they would run off to -/+ infinity with meaningless delta-method intervals)
    fit = plot.fit_power_law(k, 3.0 + 0.2 * np.log(k) + rng.normal(0, 0.002, len(k)))
    check_params(fit, {"a": 3.0, "c": 0.2}, 0.05)
    assert abs(fit["params"]["beta"]["value"]) < 0.2
    assert not fit["E_B"] and "E" not in fit["params"] and "B" not in fit["params"]
    assert "logarithmic in K" in plot.power_law_line(fit)
    xe = 3.0 + 0.2 * np.log(k) + rng.normal(0, 0.01, len(k))
    check_params(plot.fit_linear_in_log_k(k, xe), {"a": 3.0, "b": 0.2}, 0.1)
    assert plot.fit_law(plot.linear, [1, 2], [1, 2], p0=[0, 1])["params"]["a"]["se"] != 0   # dof 0: no crash


def test_position_law_parametrization():
    # x1 - d (1 - t^-c) / c is a + b t^-c with x1 = a + b, d = b c, and x1 - d ln t at c = 0, continuously
    np.testing.assert_allclose(plot.position_law(T, 3.5, 1.4, 0.7), 1.5 + 2.0 * T ** -0.7)
    np.testing.assert_allclose(plot.position_law(T, 3.0, 0.25, 0.0), 3.0 - 0.25 * np.log(T))
    np.testing.assert_allclose(plot.position_law(T, 3.0, 0.25, 1e-7), 3.0 - 0.25 * np.log(T), atol=1e-6)
    np.testing.assert_allclose(plot.position_law(T, 3.0, 0.25, 1e-13), 3.0 - 0.25 * np.log(T))


def finite_interval(p, max_width):
    assert all(math.isfinite(v) for v in (p["value"], p["se"], *p["ci95"])), p
    assert p["ci95"][0] <= p["value"] <= p["ci95"][1] and p["ci95"][1] - p["ci95"][0] < max_width, p


def test_position_fit_power_law_curve():
    """A clearly power-law curve a + b t^-c: x1, d, c recovered, and the asymptote a with an interval."""
    rng = np.random.default_rng(5)
    curve = 1.5 + 2.0 * T ** -0.7 + rng.normal(0, 0.005, BLOCK)
    fit = plot.fit_position_curve(curve, np.full(BLOCK, 0.005))
    check_params(fit, {"x1": 3.5, "d": 1.4, "c": 0.7, "a": 1.5}, 0.05)
    assert fit["asymptote"] and fit["params"]["a"]["derived"] and not fit["params"]["c"]["at_bound"]
    line = plot.fmt_position_fit(fit)
    assert "; asymptote a = x1 - d/c = " in line and "logarithmic" not in line


@pytest.mark.parametrize("exponent", [0.0, 0.002])
def test_position_fit_near_logarithmic_curve_stays_finite(exponent):
    """
    XE(t) = a + b t^-c with c ~ 0 (here a = 3 - 125, b = 125 for c = 0.002: d = b c = 0.25), i.e.
    about 3 - 0.25 ln t: the a, b form ran off to a ~ -1e3, b ~ +1e3 with intervals of +-1e6. The
    fit must give finite x1 ~ 3, d ~ 0.25, c ~ 0 with finite, narrow intervals, and no asymptote.
    """
    rng = np.random.default_rng(6)
    d = 0.25
    exact = 3.0 - d * np.log(T) if exponent == 0 else (3.0 - d / exponent) + (d / exponent) * T ** -exponent
    noise = 0.01
    fit = plot.fit_position_curve(exact + rng.normal(0, noise, BLOCK), np.full(BLOCK, noise))
    p = fit["params"]
    check_params(fit, {"x1": 3.0, "d": d}, 0.05)
    finite_interval(p["x1"], 0.1)
    finite_interval(p["d"], 0.05)
    finite_interval(p["c"], 0.1)
    assert 0 <= p["c"]["value"] < 0.05 and p["c"]["ci95"][0] == 0.0      # clipped to the bound
    assert not fit["asymptote"] and "a" not in p
    line = plot.fmt_position_fit(fit)
    assert "logarithmic within t = 1..100" in line and "no finite asymptote" in line


def test_position_fit_flat_curve():
    rng = np.random.default_rng(7)
    fit = plot.fit_position_curve(2.4 + rng.normal(0, 0.02, BLOCK), np.full(BLOCK, 0.02))
    check_params(fit, {"x1": 2.4}, 0.02)
    finite_interval(fit["params"]["d"], 0.1)
    assert not fit["asymptote"] and "flat within the noise" in plot.fmt_position_fit(fit)


# -----------------------------------------------------------------------------
# the whole script

def test_main_writes_every_output(sweep):
    text = run_plot(sweep)
    results = sweep["results"]
    for name in ("xe_vs_k", "xe_position", "excess_area", "late_power_law", "dataset", "training"):
        for ext in ("png", "pdf"):
            assert os.path.getsize(os.path.join(results, f"fig_{name}.{ext}")) > 1000
    assert not os.path.exists(os.path.join(results, "fig_model_size.png"))     # one size only
    with open(os.path.join(results, "results.csv")) as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 6 * 4                                                   # runs x categories
    row = next(r for r in rows if r["run"] == "k2-s1" and r["category"] == "chain0")
    assert row["K"] == "2" and row["components"] == "chain0+chain1" and row["in_mixture"] == "True"
    assert float(row["bayes_xe_late"]) < float(row["xe_late"]) and row["oracle_xe_early"]
    fits = json.load(open(os.path.join(results, "fits.json")))
    assert fits["first_component"] == "chain0"
    assert set(fits["views"]) == {"first", "own", "top5", "unseen"}
    assert set(fits["fits"]["position_curves"]) == {"1", "2", "3"}
    assert fits["fits"]["late_power_law"]["params"]["beta"]["ci95"][0] is not None
    for k, curve in fits["fits"]["position_curves"].items():
        assert {"x1", "d", "c"} <= set(curve["params"]) and ("a" in curve["params"]) == curve["asymptote"], k
        assert 0 <= curve["params"]["c"]["ci95"][0] <= curve["params"]["c"]["ci95"][1] <= 5, k
        for p in curve["params"].values():
            assert None not in (p["value"], *p["ci95"]) and abs(p["ci95"][1] - p["ci95"][0]) < 10, (k, p)
    assert "x1 - d (1 - t^-c) / c" in text and "x1 - d ln t" in text
    assert len(re.findall(r"^- K=\d: x1 = .*, d = .*, c = ", text, re.M)) == 3
    contrasts = fits["tests"]["contrasts_vs_reference_k"]
    assert len(contrasts) == 2 * 3 and all(c["p_holm"] >= c["p_value"] for c in contrasts)
    # the fake data put ln K nats of Bayes excess on early positions: the area recovers it
    assert fits["excess_area"]["3"]["bayes"]["value"] == pytest.approx(math.log(3), abs=1e-6)
    assert "NaN" not in open(os.path.join(results, "fits.json")).read()
    for target in re.findall(r"\]\(([^)]+)\)", text):
        assert os.path.exists(os.path.join(results, target)), target
    assert "all 6 runs trained on 48,000 tokens" in text
    assert "k4-s0" in text and "not evaluated" in text
    assert "fig_model_size" not in text and "only one model size" in text


def test_report_flags_budget_discrepancy_and_model_sizes(sweep):
    make_run(sweep["out"], sweep["data"], "k2-s0", 2, 0, sweep["components"], done_tokens=47_000)
    for k in (1, 2):
        make_run(sweep["out"], sweep["data"], f"big-k{k}", k, 0, sweep["components"], size="8L-512d",
                 n_params=8_000_000)
    stale = make_run(sweep["out"], sweep["data"], "k3-old", 3, 5, sweep["components"])
    ev = json.load(open(os.path.join(stale, "eval.json")))
    write_json(os.path.join(stale, "eval.json"), {**ev, "evalset": {**ev["evalset"], "sha": "older"}})
    make_run(sweep["out"], sweep["data"], "k1-s1-again", 1, 1, sweep["components"])
    text = run_plot(sweep)
    assert "`k1-s1-again`: duplicate of `k1-s1`" in text
    assert "`k3-old`: evaluated on a different evaluation set" in text
    assert "DISCREPANCIES" in text and "k2-s0: trained on 47,000 tokens" in text
    assert os.path.exists(os.path.join(sweep["results"], "fig_model_size.pdf"))
    assert "Other groups" in text and "8L-512d" in text


def test_single_k_single_seed_arxiv_like(tmp_path):
    components = ["cs.DS", "math.ST", "cs.IT"]
    out_dir = str(tmp_path / "out")
    make_run(out_dir, str(tmp_path / "nowhere"), "only", 1, 0, components, synthetic=False)
    results = str(tmp_path / "results")
    os.makedirs(results)
    open(os.path.join(results, "fig_excess_area.png"), "w").close()           # stale from an older sweep
    plot.main([f"--out={out_dir}", f"--results={results}", "--n_boot=100"])
    text = open(os.path.join(results, "REPORT.md")).read()
    assert "single seed" in text and "stats.json not found" in text
    assert not os.path.exists(os.path.join(results, "fig_excess_area.png"))
    for target in re.findall(r"\]\(([^)]+)\)", text):
        assert os.path.exists(os.path.join(results, target)), target


def test_no_runs_is_a_user_error(tmp_path):
    os.makedirs(tmp_path / "out" / "half-trained")
    with pytest.raises(UserError, match="evaluate.py"):
        plot.main([f"--out={tmp_path / 'out'}", f"--results={tmp_path / 'results'}"])
