"""
plot.py (with analysis.py and report.py): the report built from real tiny runs that train.py and
evaluate.py make on tiny synthetic data; where a test needs crafted statistics it overwrites the
arrays of their eval.npz. The statistics themselves are tested in tests/test_stats.py.
"""
import csv
import json
import math
import os
import re
import shutil

import numpy as np
import pytest

from harness import analysis, decomposition, experiments
import evaluate
import plot
from harness import report
from harness import laws, stats
import train
from harness.analysis import Interval
from configurator import UserError
from harness.data import BLOCK, file_sha

TINY = ["--n_layer=1", "--n_head=2", "--n_embd=16", "--batch_size=4", "--device=cpu", "--cpu_threads=1",
        "--warmup_iters=2", "--log_interval=5", "--eval_interval=50", "--val_windows=8",
        "--token_budget=1600"]
T = np.arange(1, BLOCK + 1)


def train_run(data, out, *extra):
    """One real run, trained and evaluated; returns its folder."""
    before = set(os.listdir(out)) if os.path.isdir(out) else set()
    train.main([f"--data_dir={data}", f"--out_root={out}", *TINY, *extra])
    (name,) = set(os.listdir(out)) - before - {".lock"}
    evaluate.main([os.path.join(out, name), "--eval_windows=30", "--device=cpu"])
    return os.path.join(out, name)


@pytest.fixture(scope="module")
def sweep(tiny_synthetic, tmp_path_factory):
    """K = 1..3 x seeds 1, 2 with every arm of K = 2, 3 (epochs=1), and an ablation with epochs=2."""
    out = str(tmp_path_factory.mktemp("sweep") / "out")
    runs = {}
    for k in (1, 2, 3):
        for seed in (1, 2):
            runs[k, seed] = train_run(tiny_synthetic, out, f"--k={k}", f"--seed={seed}", "--epochs=1")
    for arm in ("control", "exposure", "tagged"):
        for k in (2, 3):
            for seed in (1, 2):
                runs[k, seed, arm] = train_run(tiny_synthetic, out, f"--k={k}", f"--seed={seed}", "--epochs=1",
                                               f"--arm={arm}")
    for k in (1, 2):
        runs[k, 1, "epochs2"] = train_run(tiny_synthetic, out, f"--k={k}", "--seed=1", "--epochs=2")
    return {"out": out, "runs": runs, "data": tiny_synthetic}


def copy_out(sweep, tmp_path, drop=()):
    """A copy of the sweep's runs folder without the runs named in `drop` (keys of sweep["runs"])."""
    out = str(tmp_path / "out")
    shutil.copytree(sweep["out"], out, ignore=shutil.ignore_patterns("ckpt.pt"))
    for key in drop:
        shutil.rmtree(os.path.join(out, os.path.basename(sweep["runs"][key])))
    return out


@pytest.fixture
def text_only(monkeypatch):
    """The figures are drawn but not rendered to files: for tests that read only the report's text."""
    def close(fig, results_dir, name):
        plot.plt.close(fig)
        return f"{name}.png"
    monkeypatch.setattr(plot, "save_figure", close)


def run_plot(out, results, *extra):
    plot.main([f"--out={out}", f"--results={results}", "--n_boot=50", *extra])
    with open(os.path.join(results, "REPORT.md")) as f:
        text = f.read()
    with open(os.path.join(results, "fits.json")) as f:
        return text, json.load(f)


def run_name(sweep, key):
    return os.path.basename(sweep["runs"][key])


def close(a, b):
    return a == pytest.approx(b, abs=1e-12)


# -----------------------------------------------------------------------------
# the whole report

@pytest.fixture(scope="module")
def sweep_report(sweep, tmp_path_factory):
    """The report of the whole sweep, figures included: (REPORT.md's text, fits.json, its folder)."""
    results = str(tmp_path_factory.mktemp("report") / "results")
    return (*run_plot(sweep["out"], results), results)


def test_report_of_a_sweep_with_every_arm_and_an_ablation(sweep, sweep_report):
    text, fits, results = sweep_report
    for name in ("xe_vs_k", "xe_position", "decomposition", "excess_area", "late_power_law", "dataset",
                 "training"):
        for ext in ("png", "pdf"):
            assert os.path.getsize(os.path.join(results, f"fig_{name}.{ext}")) > 1000, name
    for target in re.findall(r"\]\(([^)]+)\)", text):
        assert os.path.exists(os.path.join(results, target)), target
    assert not os.path.exists(os.path.join(results, "fig_model_size.png"))            # one size only

    # two experiments: the main one (most runs) and the epochs=2 ablation, listed with how it differs
    with open(os.path.join(results, "results.csv")) as f:
        rows = list(csv.DictReader(f))
    tagged = [key for key in sweep["runs"] if "tagged" in key]               # scored on their own components
    assert len(rows) == (len(sweep["runs"]) - len(tagged)) * 3 + sum(key[0] for key in tagged)
    main, ablation = (json.load(open(os.path.join(sweep["runs"][key], "eval.json")))["experiment"]
                      for key in ((1, 1), (1, 1, "epochs2")))
    assert main != ablation and {r["experiment"] for r in rows} == {main, ablation}
    assert fits["experiment"] == main and len(fits["runs"]) == 6 and len(fits["other_arms"]) == 12
    assert run_name(sweep, (1, 1, "epochs2")) not in fits["runs"]                    # never pooled
    row = next(line for line in text.splitlines() if line.startswith(f"| `{ablation[:12]}`"))
    assert "epochs = 2 (main: 1)" in row and "K=1: 1, K=2: 1" in row
    assert "the one with the most runs" in text

    # the decomposition: per K >= 2 and metric, the four parts sum to the total exactly, each the
    # paired difference of its own two arms (checked against the runs' own arrays)
    parts = fits["decomposition"]["parts"]
    assert {(p["k"], p["metric"]) for p in parts} == {(k, m) for k in (2, 3) for m in analysis.METRICS}
    contrast = {(c["k"], c["metric"]): c["difference"]["value"]
                for c in fits["tests"]["contrasts_vs_reference_k"]}
    first = fits["first_component"]
    def arm_mean(key):
        return np.load(os.path.join(sweep["runs"][key], "eval.npz"))[f"model:{first}"].mean()
    for p in parts:
        values = {n: p["parts"][n]["value"] for n in ("scarcity", "dilution", "sharing", "identification")}
        assert sum(values.values()) == pytest.approx(p["total"]["value"], abs=1e-12), p
        assert close(p["total"]["value"], contrast[p["k"], p["metric"]])
        assert p["total"]["ci"][0] < p["total"]["value"] < p["total"]["ci"][1] and p["seeds"] == ["1", "2"]
        if p["metric"] == "xe_mean":         # dilution is C_E - C_S of the same K, from their own files
            k = p["k"]
            expected = np.mean([arm_mean((k, s, "exposure")) - arm_mean((k, s, "control")) for s in (1, 2)])
            assert values["dilution"] == pytest.approx(expected, abs=1e-5)
    learner = fits["decomposition"]["learner"]
    assert {i["k"] for i in learner} == {2, 3}
    assert all(i["scarcity"]["value"] > -1e-9 and i["identification"]["value"] >= -1e-9 for i in learner)
    area = fits["decomposition"]["bayes_area"]
    assert all(0 < area[str(k)]["value"] <= math.log(k) + 1e-6 for k in (2, 3))
    assert "## Decomposition: scarcity, dilution, sharing, identification" in text
    assert "| K | range | learner scarcity | learner identification | network identification | ratio |" in text
    assert "fitted per chain to each run's own transition counts" in text
    assert "## Conclusion" in text and "dash-dot: the learner" in text
    assert "Holm over this K's family" in text or "No part is established" in text

    # the arms' checks: each against its mixture run's steps (1/K of them for the exposure arm)
    assert re.search(r"all 6 runs trained on [\d,]+ tokens in [\d,]+ steps", text)
    for c in fits["control_check"]:
        assert c["mixture"] and abs(c["steps"][0] - c["expected_steps"]) <= c["tolerance"], c
        assert c["share"][0] == c["share"][1]
        if c["arm"] == "tagged":
            assert c["steps"][0] == c["steps"][1] and c["tolerance"] == 0
    arm_row = re.compile(r"\| \d \| \d \| (control|exposure|tagged) \|")
    arm_rows = [line for line in text.splitlines() if arm_row.match(line)]
    assert len(arm_rows) == 12 and all(line.endswith("| ok |") for line in arm_rows)


def test_learner_curves_on_synthetic_data(sweep):
    runs, _ = experiments.load_runs(sweep["out"])
    experiment, choice = experiments.choose_experiment(experiments.group_experiments(runs), "")
    a = analysis.analyse(experiment, experiment.runs[0].components[0], [], 20, 0)
    for k, curve in a.curves.items():
        refs = curve.references
        assert len(refs["learner"]) == len(refs["learner1"]) == len(refs["bayes"]) == BLOCK, k
        assert np.mean(refs["oracle"]) <= np.mean(refs["learner1"]) <= np.mean(refs["learner"]) + 1e-9
    assert choice == "largest"
    first = experiment.runs[0].components[0]
    d = decomposition.decompose(experiment, first, analysis.stack_view(experiment.runs[:1], [first])[1])
    assert d.arms == {2: ["control", "exposure", "tagged"], 3: ["control", "exposure", "tagged"]}
    fitted = {}                         # each run's alpha per chain (eval.json), as the report gives it
    for r in experiment.runs + experiment.twins:
        for chain, alpha in r.eval["learner_alpha"].items():
            fitted.setdefault(chain, []).append(alpha)
    assert d.learner_alpha == {c: (min(v), max(v)) for c, v in sorted(fitted.items())}
    assert all(0 < lo <= hi for lo, hi in d.learner_alpha.values())
    assert set(d.tagged_t) == {2, 3} and all(len(v) == BLOCK for v in d.tagged_t.values())


def test_another_experiment_is_reported_on_its_own(sweep, tmp_path, text_only):
    ablation = json.load(open(os.path.join(sweep["runs"][1, 1, "epochs2"], "eval.json")))["experiment"]
    text, fits = run_plot(sweep["out"], str(tmp_path / "results"), f"--group={ablation[:6]}")
    assert fits["experiment"] == ablation and len(fits["runs"]) == 2 and fits["other_arms"] == {}
    assert "chosen with --group" in text and "epochs = 1 (main: 2)" in text
    assert "Only the K-mixtures ran (CONTROLS=0): the K effect is not split." in text    # once, totals shown
    assert "No other arm ran at this K: the total is not split." in text
    with pytest.raises(UserError, match="matches 0 experiments"):
        run_plot(sweep["out"], str(tmp_path / "results"), "--group=zzzz")


def test_left_out_runs_and_single_seed_labels(sweep, tmp_path, text_only):
    """A run counted twice, one whose checkpoint is not `done`'s, one not evaluated; K=3 with one seed."""
    out = copy_out(sweep, tmp_path, drop=[(3, 2)])
    shutil.copytree(sweep["runs"][1, 1], os.path.join(out, "zz-again"))
    torn = os.path.join(out, "torn")
    shutil.copytree(sweep["runs"][2, 2], torn, ignore=shutil.ignore_patterns("ckpt.pt"))
    done = json.load(open(os.path.join(torn, "done")))
    json.dump({**done, "steps": done["steps"] + 1}, open(os.path.join(torn, "done"), "w"))
    os.makedirs(os.path.join(out, "unfinished"))
    text, fits = run_plot(out, str(tmp_path / "results"))
    assert f"`zz-again`: the same run (identity) as `{run_name(sweep, (1, 1))}`: counted once" in text
    assert re.search(r"`torn`: its checkpoint \(step \d+\) is not the finished run `done` describes", text)
    assert "`unfinished`: not evaluated" in text
    assert len(fits["runs"]) == 5
    first = fits["views"]["first"]
    assert first["3"]["xe_mean"]["covers"] == "documents only"
    assert first["2"]["covers"] == "seeds and documents"
    row = next(line for line in text.splitlines() if re.match(r"\| 3 \| 1 \| \d+ \(\d+\) \|", line))
    assert row.count("†") >= 3 and "† one seed: the interval is over documents only" in text
    assert "The p-value rests on a single seed at K = 3." in text
    assert {p["total"]["covers"] for p in fits["decomposition"]["parts"] if p["k"] == 3} == {"documents only"}
    assert re.search(r"\| 3 \| xe_mean \| [-\d.]+ \[[-\d., ]+\] † \|", text)          # decomposition row
    assert all(c["holm_single_seed"] for c in fits["tests"]["contrasts_vs_reference_k"])


def craft(out, sweep, first, offsets, size=0.01):
    """Model losses on `first` = one base plus an offset per run and a +-size pattern per seed, so a
    cell's mean over its two seeds is exactly base + offset, and its seeds still differ."""
    base = np.load(os.path.join(sweep["runs"][1, 1], "eval.npz"))[f"model:{first}"].astype(np.float64)
    pattern = np.random.default_rng(0).normal(0, 1, base.shape)
    for key, offset in offsets.items():
        path = os.path.join(out, run_name(sweep, key), "eval.npz")
        with np.load(path) as z:
            arrays = {name: z[name] for name in z.files}
        sign = 1 if key[1] == 1 else -1
        arrays[f"model:{first}"] = (base + offset + sign * size * pattern).astype(np.float32)
        np.savez(path, **arrays)
        summary_path = os.path.join(out, run_name(sweep, key), "eval.json")
        summary = json.load(open(summary_path))
        summary["npz_sha"] = file_sha(path)               # crafted as one evaluation, not a torn one
        json.dump(summary, open(summary_path, "w"))


def test_conclusion_is_built_from_the_numbers(sweep, tmp_path, text_only):
    """Crafted arms on the first component. K=2: scarcity 0.01, dilution 0.02, sharing -0.01 (helps),
    identification 0.30: the largest is named. K=3: scarcity = identification = 0.1, dilution =
    sharing = 0: the two zero parts are no causes and the largest is not established."""
    out = copy_out(sweep, tmp_path)
    first = json.load(open(os.path.join(sweep["runs"][2, 1], "eval.json")))["components"][0]
    levels = {2: {"control": 0.01, "exposure": 0.03, "tagged": 0.02, None: 0.32},
              3: {"control": 0.1, "exposure": 0.1, "tagged": 0.1, None: 0.2}}
    offsets = {(1, s): 0.0 for s in (1, 2)}
    for k, arms in levels.items():
        offsets.update({((k, s, arm) if arm else (k, s)): v for arm, v in arms.items() for s in (1, 2)})
    craft(out, sweep, first, offsets)
    text, fits = run_plot(out, str(tmp_path / "results"))
    parts = {(p["k"], p["metric"]): p["parts"] for p in fits["decomposition"]["parts"]}
    for name, value in (("scarcity", 0.01), ("dilution", 0.02), ("sharing", -0.01), ("identification", 0.30)):
        assert parts[2, "xe_mean"][name]["value"] == pytest.approx(value, abs=1e-6), name
    conclusion = text.split("## Conclusion")[1].split("\n## ")[0]
    k2 = next(line for line in conclusion.splitlines() if line.startswith("- K=2:"))
    assert "The largest part is identification." in k2 and "capacity sharing -0.0100 [" in k2 and "helps" in k2
    k3 = next(line for line in conclusion.splitlines() if line.startswith("- K=3:"))
    assert "Which part is largest is not established" in k3
    causes = k3.split("Established")[1].split(". Which")[0]
    assert "compute dilution" not in causes and "capacity sharing" not in causes     # never called causes
    assert re.search(r"\| 2 \| 0\.3200 \[[^]]+\] \| \+0\.0100 \[", conclusion)    # the table opens it
    # on synthetic data: the network's identification beside the ideal learner's, from the same numbers
    learner = next(i for i in fits["decomposition"]["learner"] if (i["k"], i["metric"]) == (2, "xe_mean"))
    assert f"{learner['identification']['value']:.4f} [" in conclusion
    assert "the network's identification (mixture - tagged) is 0.3000 [" in conclusion


# -----------------------------------------------------------------------------
# report lines (the statistics behind them: tests/test_stats.py)

def test_interval_labels():
    assert report.fmt(Interval(1.0, [0.9, 1.1], "seeds and documents")) == "1.000 [0.900, 1.100]"
    assert report.fmt(Interval(1.0, [0.9, 1.1], "documents only")).endswith("] †")
    assert report.fmt(Interval(1.0, [0.9, 1.1], "seeds only")).endswith("] ‡")
    assert report.fmt(Interval(1.0, [math.nan, math.nan], "n/a")) == "1.000 (n/a)"
    assert not Interval(0.1, [-0.1, 0.3], "seeds and documents").separated_from_zero
    assert not Interval(0.1, [math.nan, math.nan], "n/a").separated_from_zero


def test_figure_markers_say_what_each_interval_covers():
    """Filled: seeds and documents; open: one seed (documents only); open with a dashed bar: one
    document (seeds only); 'x' without a bar: no interval."""
    fig, ax = plot.plt.subplots()
    cases = [Interval(1.0, [0.9, 1.1], "seeds and documents"), Interval(1.1, [1.0, 1.2], "documents only"),
             Interval(1.2, [1.1, 1.3], "seeds only"), Interval(1.3, [math.nan, math.nan], "n/a")]
    scopes = plot.errorbar(ax, [1, 2, 3, 4], cases)
    assert scopes == set(stats.SCOPES)
    drawn = {tuple(container.lines[0].get_xdata()): container for container in ax.containers}
    faces = {x[0]: container.lines[0].get_markerfacecolor() for x, container in drawn.items()}
    assert faces[1] != "white" and faces[2] == faces[3] == "white"
    assert drawn[(4,)].lines[0].get_marker() == "x" and not drawn[(4,)].lines[2]        # no bar
    dashes = {x: drawn[(x,)].lines[2][0].get_linestyle()[0][1] for x in (2, 3)}   # (offset, pattern)
    assert dashes[2] is None and dashes[3] is not None                                 # solid, dashed
    plot.plt.close(fig)


def test_power_law_line_says_when_beta_reaches_zero():
    k = np.repeat(np.arange(1, 6), 3).astype(float)
    fit = laws.fit_power_law(k, 3.0 + 0.2 * np.log(k) + np.random.default_rng(4).normal(0, 0.002, len(k)))
    assert "logarithmic in K" in report.power_law_line(fit)
    assert "needs at least 3 values of K" in report.power_law_line(None)


def test_position_fit_lines():
    rng = np.random.default_rng(5)
    noise = np.full(BLOCK, 0.01)
    power = laws.fit_position_curve(1.5 + 2.0 * T ** -0.7 + rng.normal(0, 0.005, BLOCK), noise / 2)
    assert "; asymptote a = x1 - d/c = " in report.fmt_position_fit(power)
    logarithmic = laws.fit_position_curve(3.0 - 0.25 * np.log(T) + rng.normal(0, 0.01, BLOCK), noise)
    line = report.fmt_position_fit(logarithmic)
    assert "logarithmic within t = 1..100" in line and "no finite asymptote" in line
    flat = laws.fit_position_curve(2.4 + rng.normal(0, 0.02, BLOCK), np.full(BLOCK, 0.02))
    assert "flat within the noise" in report.fmt_position_fit(flat)


def test_no_runs_is_a_user_error(tmp_path):
    os.makedirs(tmp_path / "out" / "half-trained")
    with pytest.raises(UserError, match="evaluate.py"):
        plot.main([f"--out={tmp_path / 'out'}", f"--results={tmp_path / 'results'}"])


def test_runs_without_a_code_fingerprint_are_their_own_experiment(sweep, tmp_path, text_only):
    """Runs recorded before code entered the identity (no "code" in config.json, the identity of
    then) form a "code unknown" experiment with a note, never pooled with runs of known code."""
    from harness.runs import run_identity
    out = copy_out(sweep, tmp_path, drop=[(1, 1, "epochs2"), (2, 1, "epochs2")])
    for key in ((1, 1), (2, 1)):
        folder = os.path.join(out, os.path.basename(sweep["runs"][key]))
        config, ev = (json.load(open(os.path.join(folder, f))) for f in ("config.json", "eval.json"))
        del config["code"]
        config["identity"] = ev["identity"] = run_identity(config["config"], config["dataset"]["fingerprint"])
        for name, obj in (("config.json", config), ("eval.json", ev)):
            json.dump(obj, open(os.path.join(folder, name), "w"))
    text, _ = run_plot(out, str(tmp_path / "results"))
    experiments = text.split("## Experiments")[1].split("\n## ")[0]
    assert re.search(r"\| `[0-9a-f]{12}` \| K=1: 1, K=2: 1 \| none \| code = 'unknown", experiments), experiments
    assert "Code unknown: `" in experiments


SHOW_TITLES = """
import json, sys
import plot
titles = {}
def record(fig, results_dir, name):
    titles[name] = [ax.get_title() for ax in fig.axes]
    plot.plt.close(fig)
    return name + ".png"
plot.save_figure = record
plot.main(sys.argv[1:])
print(json.dumps(titles))
"""


def test_a_fourth_position_range_is_added_in_one_place(sweep, tmp_path):
    """One edit (a range in data.POSITION_RANGES) and results.csv, REPORT.md and the figures carry it."""
    import subprocess
    import sys
    from test_sweep import copy_of_the_repository
    repo = copy_of_the_repository(tmp_path / "repo")
    data_py = repo / "harness" / "data.py"
    source = data_py.read_text()
    edited = source.replace('"xe_late": (51, BLOCK)}', '"xe_late": (51, BLOCK), "xe_mid": (11, 50)}')
    assert edited != source
    data_py.write_text(edited)
    out, results = copy_out(sweep, tmp_path), str(tmp_path / "results")
    command = [sys.executable, "-c", SHOW_TITLES, f"--out={out}", f"--results={results}", "--n_boot=50"]
    done = subprocess.run(command, cwd=repo, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    titles = json.loads(done.stdout.strip().splitlines()[-1])
    assert "mid, t = 11..50" in titles["fig_decomposition"]
    with open(os.path.join(results, "results.csv")) as f:
        rows = list(csv.DictReader(f))
    for row in rows:                        # the new range is the mean of XE(t) over t = 11..50
        ev = json.load(open(os.path.join(out, row["run"], "eval.json")))
        xe_t = ev["categories"][row["category"]]["xe_t"]
        assert float(row["xe_mid"]) == pytest.approx(np.mean(xe_t[10:50]), rel=1e-9)
    report_text = open(os.path.join(results, "REPORT.md")).read()
    assert "XE mid, t = 11..50 |" in report_text and "| mid, t = 11..50 |" in report_text     # tables


def test_holm_adjusted_p_values_reach_the_report(sweep_report):
    """The contrasts table's "p (Holm)" column is stats.holm of its own p column, per metric."""
    text, fits, _ = sweep_report
    contrasts = fits["tests"]["contrasts_vs_reference_k"]
    for metric in analysis.METRICS:
        family = [c for c in contrasts if c["metric"] == metric]
        np.testing.assert_allclose([c["p_holm"] for c in family], stats.holm([c["p_value"] for c in family]))
        for c in family:
            assert re.search(rf"^\| {c['k']} \| {metric} \| .* \| {re.escape(report.fmt_p(c['p_value']))} \| "
                             rf"{re.escape(report.fmt_p(c['p_holm']))} \|", text, flags=re.M), (c, metric)


def test_arms_that_share_no_seed_with_their_mixture_give_the_total_alone(sweep, tmp_path, text_only):
    """K = 3's mixture ran seed 1 and its steps-matched control only seed 2: no seed has every arm,
    so no part can be paired; the total is reported and every arm's seeds are named as left out."""
    out = copy_out(sweep, tmp_path, drop=[(3, 2), (3, 1, "control")])
    text, fits = run_plot(out, str(tmp_path / "results"))
    k3 = [p for p in fits["decomposition"]["parts"] if p["k"] == 3]
    assert k3 and all(p["parts"] == {} and p["seeds"] == ["1"] for p in k3), k3
    assert all(p["left_out"] == {"control": ["2"], "exposure": ["1", "2"], "tagged": ["1", "2"]} for p in k3), k3
    k2 = [p for p in fits["decomposition"]["parts"] if p["k"] == 2]
    assert all(set(p["parts"]) == {"scarcity", "dilution", "sharing", "identification"} for p in k2)
