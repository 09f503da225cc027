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
import stats  # noqa: E402
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
             size="4L-256d", n_params=1_000_000, done_tokens=None, n_docs=12):
    folder = os.path.join(out_dir, name)
    components = all_components[:k]
    rng = np.random.default_rng([k, seed])
    categories, arrays = {}, {}
    for i, cat in enumerate(all_components):
        docs, model, bayes, oracle = fake_losses(rng, i, k, cat in components, n_docs=n_docs)
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
# the report lines of the fitted laws (the statistics themselves: tests/test_stats.py)

def check_params(fit, truth, rtol):
    for name, value in truth.items():
        p = fit["params"][name]
        assert p["value"] == pytest.approx(value, rel=rtol), (name, p)
        assert p["ci95"][0] < p["value"] < p["ci95"][1], (name, p)
        assert abs(p["value"] - value) < 4 * p["se"], (name, p)


def test_power_law_line_says_when_beta_reaches_zero():
    k = np.repeat(np.arange(1, 6), 3).astype(float)
    fit = stats.fit_power_law(k, 3.0 + 0.2 * np.log(k) + np.random.default_rng(4).normal(0, 0.002, len(k)))
    assert "logarithmic in K" in plot.power_law_line(fit)
    assert "needs at least 3 values of K" in plot.power_law_line(None)


def finite_interval(p, max_width):
    assert all(math.isfinite(v) for v in (p["value"], p["se"], *p["ci95"])), p
    assert p["ci95"][0] <= p["value"] <= p["ci95"][1] and p["ci95"][1] - p["ci95"][0] < max_width, p


def test_position_fit_power_law_curve():
    """A clearly power-law curve a + b t^-c: x1, d, c recovered, and the asymptote a with an interval."""
    rng = np.random.default_rng(5)
    curve = 1.5 + 2.0 * T ** -0.7 + rng.normal(0, 0.005, BLOCK)
    fit = stats.fit_position_curve(curve, np.full(BLOCK, 0.005))
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
    fit = stats.fit_position_curve(exact + rng.normal(0, noise, BLOCK), np.full(BLOCK, noise))
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
    fit = stats.fit_position_curve(2.4 + rng.normal(0, 0.02, BLOCK), np.full(BLOCK, 0.02))
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


def test_one_seed_cell_is_labelled_documents_only(sweep):
    """K = 3 with one seed: its intervals, the contrasts against it, the fits, Holm and the trend say so."""
    import shutil
    shutil.rmtree(os.path.join(sweep["out"], "k3-s1"))
    text = run_plot(sweep)
    fits = json.load(open(os.path.join(sweep["results"], "fits.json")))
    first = fits["views"]["first"]
    assert first["3"]["xe_mean"]["covers"] == "documents only"
    assert first["2"]["xe_mean"]["covers"] == "seeds and documents"
    row = next(line for line in text.splitlines() if line.startswith("| 3 | 1 | 60 (12) | chain0 |"))
    assert row.count("†") >= 3
    assert "† one seed: the interval is over documents only" in text
    assert "The p-value rests on a single seed at K = 3." in text
    assert "Holm-adjusted p-values of their metric lean on them too" in text
    assert fits["fits"]["late_power_law"]["covers"] == "documents only"
    contrasts = fits["tests"]["contrasts_vs_reference_k"]
    assert {c["difference"]["covers"] for c in contrasts if c["k"] == 3} == {"documents only"}
    assert all(c["holm_single_seed"] for c in contrasts)


def test_one_document_says_seeds_only_and_one_of_each_says_n_a(tmp_path):
    components = ["chain0", "chain1"]
    data_dir = make_dataset(str(tmp_path), components)
    out_dir = str(tmp_path / "out")
    for k, seeds in ((1, (0, 1)), (2, (0,))):
        for seed in seeds:
            make_run(out_dir, data_dir, f"k{k}-s{seed}", k, seed, components, n_docs=1)
    results = str(tmp_path / "results")
    plot.main([f"--out={out_dir}", f"--results={results}", "--n_boot=50"])
    text = open(os.path.join(results, "REPORT.md")).read()
    fits = json.load(open(os.path.join(results, "fits.json")))
    assert fits["views"]["first"]["1"]["xe_mean"]["covers"] == "seeds only"
    assert fits["views"]["first"]["2"]["xe_mean"]["covers"] == "n/a"
    assert "‡ one document: the interval is over seeds only" in text and "(n/a)" in text
    lo, hi = fits["views"]["first"]["1"]["xe_mean"]["ci"]
    assert hi > lo                                                        # never a zero-width interval
    assert fits["views"]["first"]["2"]["xe_mean"]["ci"] == [None, None]


def test_no_runs_is_a_user_error(tmp_path):
    os.makedirs(tmp_path / "out" / "half-trained")
    with pytest.raises(UserError, match="evaluate.py"):
        plot.main([f"--out={tmp_path / 'out'}", f"--results={tmp_path / 'results'}"])
