"""
Figures, fitted laws and REPORT.md from every evaluated run in out/.

    python plot.py                                     # reads out/, writes results/
    python plot.py --out=out_synthetic --results=results_synthetic --n_boot=200
    python plot.py --group=3fa9                        # report on another experiment

Reads out/<run>/{config.json, log.jsonl, done, eval.json, eval.npz} and the dataset's stats.json;
writes results/{results.csv, fits.json, REPORT.md, fig_*.png, fig_*.pdf}, all regenerated.
Top to bottom: config, load the runs, analyse them (analysis.py, with stats.py's intervals and
laws), draw the figures (here), write the table, the fits and the report (report.py's text).
"""
import csv
import io
import math
import os
from dataclasses import asdict, is_dataclass
from types import SimpleNamespace

import numpy as np
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt

from harness import analysis, decomposition, experiments, generalisation, report, sizes
from configurator import UserError, config_defaults, configure, run_cli
from harness.data import BLOCK, range_label
from harness.runs import atomic_write_bytes, write_json
from harness.stats import SCOPES
from harness.laws import power_law

# -----------------------------------------------------------------------------
# config (module globals are the defaults; override with a config file or --key=value)
out = "out"                 # runs root: every out/<run>/ with eval.json is a run
results = "results"         # output folder
n_boot = 400                # replicates per source of chance when refitting the laws for their intervals
boot_seed = 1337            # their RNG seed (same draws everywhere: common random numbers)
group = ""                  # the experiment to report on (a prefix of its id); default: the one
                            # the current defaults make, else the one with the most runs
# -----------------------------------------------------------------------------
POSITIONS = np.arange(1, BLOCK + 1)
REFERENCE_STYLES = {"bayes": "--", "learner": "-."}     # per K, beside the model's solid curve


# -----------------------------------------------------------------------------
# drawing helpers

def save_figure(fig, results_dir, name):
    for ext in ("png", "pdf"):
        buffer = io.BytesIO()
        fig.savefig(buffer, format=ext, dpi=150, bbox_inches="tight")
        atomic_write_bytes(os.path.join(results_dir, f"{name}.{ext}"), buffer.getvalue())
    plt.close(fig)
    return f"{name}.png"


def k_colours(ks):
    return {k: plt.cm.viridis(x) for k, x in zip(ks, np.linspace(0, 0.85, max(len(ks), 1)))}


def style_axes(fig, axes, scopes=(), log_grid=False):
    """Grid and legend on every axis, and a line under the figure for every kind of partial interval."""
    for ax in axes:
        ax.grid(alpha=0.3, which="both" if log_grid else "major")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    notes = [report.SCOPE_FIGURE_NOTES[s] for s in SCOPES if s in scopes and s in report.SCOPE_FIGURE_NOTES]
    if notes:
        fig.text(0.01, -0.02, "; ".join(notes), fontsize=7, ha="left", va="top")


def errorbar(ax, x, intervals, marker="o", line="", color="C0", label=None):
    """Intervals at x with their 95% bars; the marker says what each covers: filled seeds and documents,
    open documents only (one seed) or seeds only (one document, dashed bar), 'x' none. Returns the scopes."""
    xs = np.asarray(x, dtype=float)
    value = np.array([c.value for c in intervals], dtype=float)
    lo, hi = (np.array([c.ci[i] for c in intervals], dtype=float) for i in (0, 1))
    scopes = [c.covers for c in intervals]
    if line:
        ax.plot(xs, value, line, color=color)
    for covers in [s for s in SCOPES if s in scopes]:
        pick = [i for i, s in enumerate(scopes) if s == covers]
        bars = None if covers == "n/a" else [value[pick] - lo[pick], hi[pick] - value[pick]]   # t: symmetric
        drawn = ax.errorbar(xs[pick], value[pick], yerr=bars, fmt="x" if covers == "n/a" else marker,
                            ls="none", color=color, capsize=3, label=label,
                            mfc=color if covers == "seeds and documents" else "white")
        label = None
        if covers == "seeds only":
            for bar in drawn[2]:
                bar.set_linestyle("--")
    return set(scopes)


def band(ax, interval, color, label):
    """A curve with its 95% band; hatched when the band is over documents only or seeds only."""
    ax.plot(POSITIONS, interval.value, color=color, label=label + report.SCOPE_MARKS.get(interval.covers, ""))
    partial = interval.covers != "seeds and documents"
    ax.fill_between(POSITIONS, *np.asarray(interval.ci, dtype=float), color=color,
                    alpha=0.12 if partial else 0.2, hatch="///" if partial else None)
    return {interval.covers}


def bars(ax, x, intervals, color, label):
    """Bars with 95% error bars; hatched where an interval covers less, no bar where there is none."""
    value = np.array([i.value for i in intervals], dtype=float)
    spread = np.array([[max(i.value - i.ci[0], 0), max(i.ci[1] - i.value, 0)] if i.covers != "n/a" else [0, 0]
                       for i in intervals], dtype=float).T
    drawn = ax.bar(x, value, width=0.8 / 3, color=color, label=label, yerr=spread, capsize=2,
                   error_kw={"lw": 0.8})
    for patch, i in zip(drawn.patches, intervals):
        if i.covers != "seeds and documents":
            patch.set_hatch("///")
    return {i.covers for i in intervals}


# -----------------------------------------------------------------------------
# the figures (their captions and numbers: report.py)

def figure_xe_vs_k(a, results_dir):
    fig, axes = plt.subplots(1, len(a.views), figsize=(4 * len(a.views), 3.4), squeeze=False)
    scopes = set()
    for ax, view in zip(axes[0], a.views.values()):
        ks, cells = list(view.cells), view.cells
        scopes |= errorbar(ax, ks, [cells[k].xe_mean for k in ks], line="-", label="model (95% CI)")
        for k in ks:
            ax.plot([k] * len(cells[k].run_xe_mean), cells[k].run_xe_mean, ".", color="C0", alpha=0.4)
        for kind, style, colour in (("bayes", "s--", "grey"), ("oracle", ":", "black")):
            reference = [getattr(cells[k], f"{kind}_mean") for k in ks]
            if all(reference):
                ax.plot(ks, [r.value for r in reference], style, color=colour, label=kind)
        title = analysis.VIEWS[view.name] + (f" ({a.first})" if view.name == "first" else "")
        ax.set(title=title, xlabel="K (components in training mix)", xticks=ks)
    axes[0][0].set_ylabel(f"XE, {range_label('xe_mean')} (nats)")
    style_axes(fig, axes[0], scopes)
    return save_figure(fig, results_dir, "fig_xe_vs_k")


def figure_positions(a, results_dir):
    colours, ref = k_colours(a.ks), a.curves[a.reference_k]
    fig, (ax, ax_excess) = plt.subplots(1, 2, figsize=(11, 4))
    scopes = set()
    for k, curve in a.curves.items():
        scopes |= band(ax, curve.xe_t, colours[k], f"K={k}")
        if curve.excess_t is not None:
            scopes |= band(ax_excess, curve.excess_t, colours[k], f"K={k} - K={a.reference_k}")
        for kind, style in REFERENCE_STYLES.items():
            values, base = curve.references.get(kind), ref.references.get(kind)
            if values is not None:
                ax.plot(POSITIONS, values, style, color=colours[k], lw=1)
            if values is not None and base is not None and curve.excess_t is not None:
                ax_excess.plot(POSITIONS, np.subtract(values, base), style, color=colours[k], lw=1)
    if "oracle" in ref.references:
        ax.plot(POSITIONS, ref.references["oracle"], "k:", label="oracle")
    for kind, style in REFERENCE_STYLES.items():                # a legend entry per reference's style
        if kind in ref.references:
            ax.plot([], [], style, color="grey", lw=1, label=kind)
    ax.set(xscale="log", xlabel="position t (tokens of context)", ylabel="XE(t) (nats)",
           title=f"{a.first}: XE(t) per K")
    ax_excess.axhline(0, color="grey", lw=0.8)
    ax_excess.set(xscale="log", xlabel="position t", ylabel=f"XE_K(t) - XE_{a.reference_k}(t) (nats)",
                  title=f"paired excess over K={a.reference_k} (95% CI)")
    style_axes(fig, (ax, ax_excess), scopes, log_grid=True)
    return save_figure(fig, results_dir, "fig_xe_position")


PART_COLOURS = {"scarcity": "C2", "dilution": "C1", "sharing": "C4", "identification": "C3"}


def figure_decomposition(a, results_dir):
    """Per metric, the K effect on the first component and its four parts per K (pointwise 95%
    intervals); on synthetic data also the tagged mixture's XE(t) beside learner1's (told the chain)."""
    d = a.decomposition
    n, tagged = len(analysis.METRICS), bool(d.tagged_t)
    fig, axes = plt.subplots(1 + tagged, n, figsize=(14 * n / 3, 3.8 * (1 + tagged)), squeeze=False)
    scopes = set()
    names = ["total"] + list(decomposition.PARTS)
    for ax, metric in zip(axes[0], analysis.METRICS):
        entries = [p for p in d.parts if p.metric == metric]
        x, width = np.arange(len(entries)), 0.8 / len(names)
        for j, name in enumerate(names):
            drawn = [(i, p.total if name == "total" else p.parts.get(name)) for i, p in enumerate(entries)]
            drawn = [(i, v) for i, v in drawn if v is not None]
            if drawn:
                label = "total: mixture - K=1" if name == "total" else decomposition.PART_LABELS[name]
                offset = (j - (len(names) - 1) / 2) * width
                scopes |= bars(ax, x[[i for i, _ in drawn]] + offset, [v for _, v in drawn],
                               PART_COLOURS.get(name, "C0"), label if ax is axes[0][0] else None)
        ax.axhline(0, color="grey", lw=0.8)
        ax.set(xticks=x, xticklabels=[f"K={p.k}" for p in entries], title=report.METRIC_LABELS[metric])
    axes[0][0].set_ylabel("XE_K - XE_1 and its parts (nats)")
    if tagged:
        colours = k_colours(a.ks)
        ax = axes[1][0]
        for k, values in d.tagged_t.items():
            ax.plot(POSITIONS, values, "-", color=colours[k], label=f"tagged K={k}")
            learner1 = a.curves[k].references.get("learner1") if k in a.curves else None
            if learner1 is not None:
                ax.plot(POSITIONS, learner1, "-.", color=colours[k], lw=1)
        ax.plot([], [], "-.", color="grey", lw=1, label="learner1 (told the chain)")
        ax.set(xscale="log", xlabel="position t", ylabel="XE(t) (nats)", title=f"{a.first}: told the component")
        for extra in axes[1][1:]:
            extra.axis("off")
    style_axes(fig, [ax for ax in axes.ravel() if ax.axison], scopes)
    return save_figure(fig, results_dir, "fig_decomposition")


def figure_excess_area(a, results_dir):
    ks = a.ks[1:]
    x = np.log(ks)
    fig, ax = plt.subplots(figsize=(5.5, 4))
    scopes = set()
    for key, style, colour, label in (("model", "o", "C0", "model A_K"),
                                      ("identification", "^", "C1", "model, above late level"),
                                      ("bayes", "s", "C2", "Bayes-optimal A_K")):
        if all(getattr(a.areas[k], key) is not None for k in ks):
            scopes |= errorbar(ax, x, [getattr(a.areas[k], key) for k in ks], marker=style, color=colour,
                               label=label)
    grid = np.linspace(0, max(x.max(), 0.1), 50)
    ax.plot(grid, grid, "k--", label="ln K bound (identification)")
    ax.axhline(0, color="grey", lw=0.8)
    ref = a.reference_k
    ax.set(xlabel=f"ln K  (relative to K={ref})", title=f"{a.first}: excess area over K={ref}",
           ylabel=f"excess area sum_t [XE_K(t) - XE_{ref}(t)] (nats)")
    style_axes(fig, [ax], scopes)
    return save_figure(fig, results_dir, "fig_excess_area")


def figure_late_power_law(a, results_dir):
    cells, fit, ks = a.views["first"].cells, a.power_law, a.ks
    fig, (ax, ax_excess) = plt.subplots(1, 2, figsize=(10, 3.8))
    scopes = errorbar(ax, ks, [cells[k].xe_late for k in ks], label="model (95% CI)")
    for k in ks:
        ax.plot([k] * len(cells[k].run_xe_late), cells[k].run_xe_late, ".", color="C0", alpha=0.4)
    if all(cells[k].bayes_late for k in ks):
        ax.plot(ks, [cells[k].bayes_late.value for k in ks], "s--", color="grey", label="Bayes-optimal")
    grid = np.linspace(min(ks), max(ks), 100)
    if fit and "params" in fit:
        e, c, beta = (fit["params"][n]["value"] for n in ("a", "c", "beta"))
        ax.plot(grid, power_law(grid, e, c, beta), "C1-",
                label=f"E + B K^beta, beta = {beta:.2f}" + report.SCOPE_MARKS.get(fit.get("covers"), ""))
        ax_excess.plot(grid, power_law(grid, 0, c, beta) - power_law(ks[0], 0, c, beta), "C1-", label="fit")
    late = [c.difference for c in a.contrasts if c.metric == "xe_late"]
    scopes |= errorbar(ax_excess, ks[1:], late, label="paired excess (95% CI)")
    ax.set(xlabel="K", ylabel=f"XE, {range_label('xe_late')} (nats)", xticks=ks,
           title=f"{a.first}: late positions")
    ax_excess.axhline(0, color="grey", lw=0.8)
    ax_excess.set(xlabel="K", ylabel=f"late XE_K - late XE_{ks[0]} (nats)", xticks=ks, title="late excess")
    style_axes(fig, (ax, ax_excess), scopes)
    return save_figure(fig, results_dir, "fig_late_power_law")


def figure_model_size(sizes, results_dir):
    """Per model size: XE on the first component against K (left) and the identification part,
    the network's cost of inferring the component in context, against K (right)."""
    fig, (ax, ax_parts) = plt.subplots(1, 2, figsize=(11, 4))
    scopes = set()
    for i, r in enumerate(sizes.results):
        ks = list(r.cells)
        label = f"{r.size} ({r.n_params / 1e3:,.0f}k params)"
        scopes |= errorbar(ax, ks, [r.cells[k].xe_mean for k in ks], line="-", color=f"C{i}", label=label)
        parts = [(k, p.parts["identification"]) for k, p in r.parts.items() if "identification" in p.parts]
        if parts:
            scopes |= errorbar(ax_parts, [k for k, _ in parts], [v for _, v in parts], line="-", color=f"C{i}",
                               label=label)
    ax.set(xlabel="K", ylabel=f"XE, {range_label('xe_mean')} (nats)", title="first component, per size")
    ax_parts.axhline(0, color="grey", lw=0.8)
    ax_parts.set(xlabel="K", ylabel="identification: mixture - tagged (nats)", title="identification, per size")
    style_axes(fig, [ax, ax_parts], scopes)
    return save_figure(fig, results_dir, "fig_model_size")


def figure_unseen(u, results_dir):
    """XE on the held-out components against K: the model and the in-context learner."""
    fig, ax = plt.subplots(figsize=(5.5, 4))
    ks = [r.k for r in u.rows]
    scopes = errorbar(ax, ks, [r.model for r in u.rows], line="-", label="model (95% CI)")
    if u.uniform is not None:
        ax.plot(ks, [r.context.value for r in u.rows], "-.", color="C2", label="in-context learner")
        ax.axhline(u.uniform, color="grey", lw=0.8, ls=":", label=f"uniform (ln V = {u.uniform:.2f})")
    ax.set(xlabel="K (components trained on)", ylabel=f"XE, {range_label('xe_mean')} (nats)", xticks=ks,
           title=f"unseen: {', '.join(u.categories)}")
    style_axes(fig, [ax], scopes)
    return save_figure(fig, results_dir, "fig_unseen")


def figure_dataset(dataset_stats, results_dir):
    rows = dataset_stats["rows"]
    categories = list(dict.fromkeys(r["category"] for r in rows))
    splits = list(dict.fromkeys(r["split"] for r in rows))
    tokens = {(r["category"], r["split"]): r["tokens"] for r in rows}
    fig, ax = plt.subplots(figsize=(max(6, 0.7 * len(categories) + 2), 4))
    width = 0.8 / len(splits)
    for i, split in enumerate(splits):
        heights = [max(tokens.get((c, split), 0), 1) for c in categories]
        ax.bar(np.arange(len(categories)) + i * width, heights, width, label=split)
    ax.set_xticks(np.arange(len(categories)) + 0.4 - width / 2)
    order = dataset_stats.get("default_order", [])
    ax.set_xticklabels([f"{c}\n(#{order.index(c) + 1})" if c in order else c for c in categories], fontsize=8)
    ax.set(yscale="log", ylabel="tokens", title="dataset composition (#n: position in default order)")
    style_axes(fig, [ax])
    return save_figure(fig, results_dir, "fig_dataset")


def figure_training(runs, results_dir):
    colours = k_colours(sorted({r.k for r in runs}))
    fig, (ax_train, ax_val) = plt.subplots(1, 2, figsize=(11, 4))
    for r in runs:
        train = [e for e in r.log if e.get("kind") == "train"]
        val = [e for e in r.log if e.get("kind") == "val"]
        label = f"K={r.k}" if r is next(x for x in runs if x.k == r.k) else None
        ax_train.plot([e["tokens"] for e in train], [e["loss"] for e in train], color=colours[r.k],
                      lw=0.8, alpha=0.7, label=label)
        ax_val.plot([e["tokens"] for e in val], [e["val_loss"] for e in val], "o-", ms=3,
                    color=colours[r.k], alpha=0.7, label=label)
    ax_train.set(xlabel="training tokens", ylabel="train loss (nats)", title="training loss, each run")
    ax_val.set(xlabel="training tokens", ylabel="val loss (nats)", title="validation loss, mixture val split")
    style_axes(fig, (ax_train, ax_val))
    return save_figure(fig, results_dir, "fig_training")


def draw_figures(s, results_dir):
    """{figure key: file name} for every figure the data supports."""
    a, images = s.analysis, {}
    images["xe_vs_k"] = figure_xe_vs_k(a, results_dir)
    if a.first is not None:
        images["xe_position"] = figure_positions(a, results_dir)
    if a.decomposition is not None and a.decomposition.parts:
        images["decomposition"] = figure_decomposition(a, results_dir)
    if a.several_k:
        images["excess_area"] = figure_excess_area(a, results_dir)
        images["late_power_law"] = figure_late_power_law(a, results_dir)
    if s.unseen is not None and s.unseen.rows:
        images["unseen"] = figure_unseen(s.unseen, results_dir)
    if s.sizes:
        images["model_size"] = figure_model_size(s.sizes, results_dir)
    if s.dataset_stats:
        images["dataset"] = figure_dataset(s.dataset_stats, results_dir)
    images["training"] = figure_training(s.main.runs, results_dir)
    return images


# -----------------------------------------------------------------------------
# outputs: CSV, JSON

def clean(obj):
    """JSON-safe: dataclasses to dicts, numpy scalars to Python, NaN/inf to None, keys to strings."""
    if is_dataclass(obj):
        obj = asdict(obj)
    if isinstance(obj, dict):
        return {str(k): clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, np.ndarray)):
        return [clean(v) for v in obj]
    if isinstance(obj, (np.floating, float)):
        return float(obj) if math.isfinite(obj) else None
    return int(obj) if isinstance(obj, np.integer) else obj


def write_csv(path, rows):
    fields = list(dict.fromkeys(f for row in rows for f in row))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=fields, restval="", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_bytes(path, buffer.getvalue().encode())


def flat_cell(cell):
    """A cell as fits.json holds it: each range's interval a key of its own (xe_mean, xe_early, ...)."""
    fields = {k: v for k, v in asdict(cell).items() if k != "xe"}
    return {**fields, **{m: asdict(interval) for m, interval in cell.xe.items()}}


def fits_json(s):
    a = s.analysis
    views = a.views.items()
    return clean({"experiment": s.main.id, "runs": [r.name for r in s.main.runs], "n_boot": s.n_boot,
                  "other_arms": {r.name: r.arm for r in s.main.twins}, "first_component": a.first,
                  "views": {name: {k: flat_cell(c) for k, c in view.cells.items()} for name, view in views},
                  "fits": {"xe_mean_vs_lnK": {name: view.lnk_fit for name, view in views if view.lnk_fit},
                           "late_power_law": a.power_law,
                           "position_curves": {k: c.position_fit for k, c in a.curves.items()}},
                  "tests": {"trend": {name: view.trend for name, view in views},
                            "contrasts_vs_reference_k": a.contrasts},
                  "excess_area": a.areas, "decomposition": a.decomposition, "model_size": s.sizes,
                  "budget_check": s.budget, "control_check": s.controls, "unseen": s.unseen})


# -----------------------------------------------------------------------------

def main(argv):
    cfg = SimpleNamespace(**configure(config_defaults(globals()), argv))
    # load the runs
    runs, skipped = experiments.load_runs(cfg.out)
    if not runs:
        raise UserError(f"no evaluated runs in {cfg.out}/; run `python evaluate.py {cfg.out}/<run>` "
                        f"(or `bash sweep.sh`) first")
    runs = experiments.drop_other_evalsets(runs, skipped)
    runs = experiments.drop_mixed_cells(experiments.drop_other_evaluations(runs, skipped), skipped)
    print(f"{len(runs)} evaluated run(s) in {cfg.out}/" + (f", {len(skipped)} skipped" if skipped else ""))

    # analyse the main experiment (and list the others with how they differ)
    groups = experiments.group_experiments(runs)
    experiment, choice = experiments.choose_experiment(groups, cfg.group)
    dataset_stats, order, order_known = experiments.component_order(experiment.runs, cfg.out)
    if not order_known:
        print("warning: no stats.json/meta.json found; 'top5' means the components the runs used")
    first = experiments.first_component(experiment.runs, order)
    print(f"main experiment {experiment.id[:12]} ({len(experiment.runs)} runs, "
          f"{len(experiment.twins)} of other arms), first component {first}; {len(groups) - 1} others")
    study_analysis = analysis.analyse(experiment, first, order[:5], cfg.n_boot, cfg.boot_seed)
    if first is not None:
        docs = analysis.stack_view(experiment.runs[:1], [first])[1]
        study_analysis.decomposition = decomposition.decompose(experiment, first, docs)
    study = analysis.Study(
        out=cfg.out, runs=runs, skipped=skipped, main=experiment, choice=choice,
        analysis=study_analysis,
        experiments=analysis.summarise_experiments(groups, experiment, first),
        budget=experiments.budget_check(experiment.runs), controls=experiments.arm_checks(experiment),
        sizes=sizes.analyse_sizes(groups, experiment, first, cfg.n_boot, cfg.boot_seed),
        dataset_stats=dataset_stats, order_known=order_known, n_boot=cfg.n_boot,
        unseen=generalisation.analyse_unseen(experiment))

    # draw the figures, removing those this data no longer supports
    try:
        os.makedirs(cfg.results, exist_ok=True)
        probe = os.path.join(cfg.results, ".writable")
        open(probe, "w").close()
        os.remove(probe)
    except OSError as e:
        raise UserError(f"cannot write the results to {cfg.results} ({os.strerror(e.errno)}); choose another "
                        f"folder with --results=<folder> (RESULTS= for sweep.sh)")
    images = draw_figures(study, cfg.results)
    drawn = {image.rsplit(".", 1)[0] for image in images.values()}
    for name in os.listdir(cfg.results):
        if name.startswith("fig_") and name.rsplit(".", 1)[0] not in drawn:
            os.remove(os.path.join(cfg.results, name))

    # write the table, the fits and the report
    rows = experiments.results_rows(runs)
    write_csv(os.path.join(cfg.results, "results.csv"), rows)
    write_json(os.path.join(cfg.results, "fits.json"), fits_json(study))
    atomic_write_bytes(os.path.join(cfg.results, "REPORT.md"), report.document(study, images).encode())
    if study.budget.problems or not all(c.ok for c in study.controls):
        print("budget check: DISCREPANCIES (see REPORT.md, Budget check)")
    for view in study.analysis.views.values():
        cells = view.cells.items()
        print(f"{view.name:>6}: " + "  ".join(f"K={k} {report.fmt(c.xe_mean)}" for k, c in cells))
    print(f"wrote {len(rows)} rows to {cfg.results}/results.csv, {len(drawn)} figures (png+pdf), fits.json; "
          f"report: {os.path.join(cfg.results, 'REPORT.md')}")


if __name__ == "__main__":
    run_cli(main)
