"""
Figures, fitted laws and REPORT.md from every evaluated run in out/.

    python plot.py                                     # reads out/, writes results/
    python plot.py --out=out_synthetic --results=results_synthetic --n_boot=200

Reads out/<run>/{config.json, log.jsonl, done, eval.json, eval.npz} and the dataset's stats.json;
writes results/{results.csv, fits.json, REPORT.md, fig_*.png, fig_*.pdf}, all regenerated.

The statistics (intervals over seeds and documents, paired differences, tests, fitted laws and
what each interval covers) live in stats.py, whose docstring describes them; this script groups
the runs, asks stats.py for the numbers, and draws and writes them.
"""
import csv
import io
import math
import os
from types import SimpleNamespace

import numpy as np
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt

from common import (BLOCK, UserError, atomic_write_bytes, config_defaults, configure, read_json,
                    read_log, run_cli, write_json)
from stats import (POSITION_C_BOUNDS, SCOPES, DocumentMeans, crossed_mean, difference_interval, document_means,
                   fit_linear_in_log_k, fit_position_curve, fit_power_law, holm, interval_component,
                   law_explanation, mean_interval, power_law, position_law, curve_replicates,
                   run_level_replicates, trend_test)

# -----------------------------------------------------------------------------
# config (module globals are the defaults; override with a config file or --key=value)
out = "out"                 # runs root: every out/<run>/ with eval.json is a run
results = "results"         # output folder
n_boot = 400                # replicates per source of chance when refitting the laws for their intervals
boot_seed = 1337            # their RNG seed (same draws everywhere: common random numbers)
# -----------------------------------------------------------------------------
EARLY = slice(0, 10)        # xe_early: positions t = 1..10
LATE = slice(50, BLOCK)     # xe_late: positions t = 51..100
POSITIONS = np.arange(1, BLOCK + 1)
VIEWS = {"first": "first component", "own": "own components (mean)",
         "top5": "top five (mean)", "unseen": "unseen categories (mean)"}


# -----------------------------------------------------------------------------
# loading runs


def load_runs(out_dir):
    """Evaluated runs (sorted by K, seed, name) and {name: why} for folders that are not."""
    if not os.path.isdir(out_dir):
        return [], {}
    runs, skipped = [], {}
    for name in sorted(os.listdir(out_dir)):
        folder = os.path.join(out_dir, name)
        if not os.path.isdir(folder) or name.startswith("."):
            continue
        if not os.path.exists(os.path.join(folder, "eval.json")):
            skipped[name] = "not evaluated (no eval.json)"
            continue
        if not os.path.exists(os.path.join(folder, "eval.npz")):
            skipped[name] = "not evaluated (eval.json without eval.npz)"
            continue
        try:
            ev = read_json(os.path.join(folder, "eval.json"))
            with np.load(os.path.join(folder, "eval.npz")) as z:
                arrays = {key: z[key] for key in z.files}
        except (OSError, ValueError) as e:          # e.g. copied while evaluate.py was writing
            skipped[name] = f"unreadable evaluation files ({type(e).__name__}: {e}); re-run evaluate.py"
            continue
        config_path, done_path = os.path.join(folder, "config.json"), os.path.join(folder, "done")
        runs.append({"name": name, "dir": folder, "eval": ev, "arrays": arrays,
                     "config": read_json(config_path) if os.path.exists(config_path) else {},
                     "done": read_json(done_path) if os.path.exists(done_path) else None,
                     "log": read_log(os.path.join(folder, "log.jsonl")),
                     "k": int(ev["k"]), "seed": ev["seed"], "components": list(ev["components"]),
                     "key": (ev["dataset"], ev["model_size"], int(ev["token_budget"]))})
    # the same training run under two names (say a sweep's and a hand-started one) must count once
    seen = {}
    for r in list(runs):
        ev = r["eval"]
        identity = (ev["dataset"], ev["model_size"], int(ev["token_budget"]), tuple(ev["components"]),
                    tuple(round(w, 6) for w in ev.get("weights", [])), str(ev["seed"]),
                    r["config"].get("config", {}).get("epochs"))
        if identity in seen:
            skipped[r["name"]] = (f"duplicate of `{seen[identity]}` (same data, mixture, size, budget "
                                  f"and seed): counted once")
            runs.remove(r)
        else:
            seen[identity] = r["name"]
    runs.sort(key=lambda r: (r["k"], str(r["seed"]), r["name"]))
    return runs, skipped


def dataset_file(run, filename, out_dir):
    """<config.data_dir>/filename, trying the path as given and relative to out/'s parent."""
    data_dir = run["config"].get("config", {}).get("data_dir") or run["config"].get("dataset", {}).get("dir")
    if not data_dir:
        return None
    for base in ("", os.path.dirname(os.path.abspath(out_dir))):
        path = os.path.join(base, data_dir, filename)
        if os.path.exists(path):
            return path
    return None


def stack_view(cell, categories, kind="model"):
    """
    (S, N, T) losses of a cell's seeds on the view's pooled windows, and a document id per window,
    'category:doc', the same for a document in every cell (the K values share documents).
    """
    if not categories or any(f"{kind}:{c}" not in r["arrays"] for r in cell for c in categories):
        return None, None
    try:
        values = np.stack([np.concatenate([r["arrays"][f"{kind}:{c}"] for c in categories]) for r in cell])
    except ValueError:
        raise UserError(f"runs {', '.join(r['name'] for r in cell)} were scored on different evaluation "
                        f"windows; re-run `python evaluate.py <run> --force` on them so they share the fixed set")
    docs = [np.char.add(f"{c}:", cell[0]["arrays"][f"doc:{c}"].astype(np.int64).astype(str)) for c in categories]
    return values, np.concatenate(docs)


def view_categories(view, cell, first, top5):
    evaluated = [c for c in cell[0]["eval"]["categories"] if all(c in r["eval"]["categories"] for r in cell)]
    mixed = {c for r in cell for c in r["components"]}
    chosen = {"first": [first] if first else [],
              "own": [c for c in cell[0]["components"] if all(c in r["components"] for r in cell)],
              "top5": list(top5),
              "unseen": [c for c in evaluated if c not in mixed]}[view]
    return [c for c in chosen if c in evaluated]


# -----------------------------------------------------------------------------
# analysis of one group of runs (same dataset, model size, token budget)

def window_stats(values):
    """Per-window (mean over t, early mean, late mean): (S, N, 3)."""
    return np.stack([values.mean(-1), values[..., EARLY].mean(-1), values[..., LATE].mean(-1)], -1)


def area_parts(values):
    """Per-window area sum_t XE(t), and the area above the window's late-position level."""
    area = values.sum(-1)
    return np.stack([area, area - BLOCK * values[..., LATE].mean(-1)], -1)


def summarise_cell(cell, categories):
    """XE of one K's runs on a view's windows with intervals; and its DocumentMeans for the fits."""
    values, docs = stack_view(cell, categories)
    if values is None:
        return None, None
    stats_ = window_stats(values)
    means = document_means(stats_, docs)
    overall = mean_interval(means)
    summary = {"n_seeds": len(cell), "seeds": [r["seed"] for r in cell], "runs": [r["name"] for r in cell],
               "categories": categories, "n_windows": values.shape[1], "n_docs": len(means.ids),
               "covers": overall["covers"],
               "run_xe_mean": stats_[..., 0].mean(1).tolist(), "run_xe_late": stats_[..., 2].mean(1).tolist()}
    for i, metric in enumerate(("xe_mean", "xe_early", "xe_late")):
        summary[metric] = interval_component(overall, i)
    for kind in ("bayes", "oracle"):
        ref, _ = stack_view(cell, categories, kind)
        if ref is not None:
            overall = crossed_mean(window_stats(ref), docs)
            summary[f"{kind}_mean"] = interval_component(overall, 0)
            summary[f"{kind}_late"] = interval_component(overall, 2)
    return summary, means


def column(means, index):
    """One window statistic of a cell's DocumentMeans (S, D, 3) -> (S, D)."""
    return DocumentMeans(means.means[..., index], means.weights, means.ids)


def analyse_group(runs, first, top5, cfg):
    by_k = {}
    for r in runs:
        by_k.setdefault(r["k"], []).append(r)
    ks = sorted(by_k)
    result = {"ks": ks, "first": first, "views": {}, "trend": {}, "lnK_fits": {}}
    view_means = {}
    for view in VIEWS:
        summaries = {k: summarise_cell(by_k[k], view_categories(view, by_k[k], first, top5)) for k in ks}
        cells = {k: s for k, (s, _) in summaries.items() if s is not None}
        if not cells:
            continue
        result["views"][view] = cells
        view_means[view] = [summaries[k][1] for k in cells]
        k_runs = [k for k, s in cells.items() for _ in s["run_xe_mean"]]
        xe_runs = [x for s in cells.values() for x in s["run_xe_mean"]]
        result["trend"][view] = trend_test(k_runs, xe_runs)
        if len(cells) >= 2:
            replicates = run_level_replicates([column(m, 0) for m in view_means[view]], xe_runs, cfg.n_boot,
                                              cfg.boot_seed)
            result["lnK_fits"][view] = fit_linear_in_log_k(k_runs, xe_runs, replicates)
    if first is None:
        return result
    # the first component is in every mixture, so its windows pair every K with the reference K:
    # per-position curves, paired contrasts, excess areas and the fitted laws all use it
    ref, docs = ks[0], stack_view(by_k[ks[0]], [first])[1]
    losses = {kind: {k: stack_view(by_k[k], [first], kind)[0] for k in ks} for kind in ("model", "bayes", "oracle")}
    model = {k: document_means(losses["model"][k], docs) for k in ks}
    per_window = {k: document_means(window_stats(losses["model"][k]), docs) for k in ks}
    areas = {kind: {k: document_means(area_parts(v), docs) for k, v in losses[kind].items() if v is not None}
             for kind in ("model", "bayes")}
    result["curves"], result["excess_t"], result["areas"], result["position_fits"] = {}, {}, {}, {}
    for k in ks:
        curve = mean_interval(model[k])
        result["curves"][k] = {"xe_t": curve, **{f"{kind}_t": losses[kind][k].mean(axis=(0, 1)).tolist()
                               for kind in ("bayes", "oracle") if losses[kind][k] is not None}}
        replicates = curve_replicates(model[k], curve["value"], cfg.n_boot, cfg.boot_seed)
        result["position_fits"][k] = fit_position_curve(curve["value"], curve["se"], replicates)
    contrasts = []
    for k in ks[1:]:
        result["excess_t"][k] = difference_interval(model[k], model[ref])
        area = difference_interval(areas["model"][k], areas["model"][ref])
        area = {"model": interval_component(area, 0), "identification": interval_component(area, 1),
                "bound": math.log(k)}     # Bayes_K - Bayes_ref <= (Bayes_K - oracle) <= ln K
        if k in areas["bayes"] and ref in areas["bayes"]:
            area["bayes"] = interval_component(difference_interval(areas["bayes"][k], areas["bayes"][ref]), 0)
        result["areas"][k] = area
        difference = difference_interval(per_window[k], per_window[ref])
        for i, metric in enumerate(("xe_mean", "xe_early", "xe_late")):
            contrasts.append({"k": k, "reference_k": ref, "metric": metric,
                              "difference": interval_component(difference, i),
                              "p_value": float(difference["p_value"][i]), "n_seeds": len(by_k[k]),
                              "n_seeds_reference": len(by_k[ref]), "n_windows": len(docs), "n_docs": len(model[k].ids)})
    for metric in ("xe_mean", "xe_early", "xe_late"):        # Holm across the K contrasts of one metric
        family = [c for c in contrasts if c["metric"] == metric]
        for c, p_adj in zip(family, holm([c["p_value"] for c in family]) if family else []):
            c["p_holm"] = float(p_adj)
            # the family's adjusted p-values lean on every member: say when one of them rests on one seed
            c["holm_single_seed"] = any(f["difference"]["covers"] != "seeds and documents" for f in family)
    result["contrasts"] = contrasts
    first_view = result["views"].get("first", {})
    if len(first_view) >= 3:
        k_runs = [k for k, s in first_view.items() for _ in s["run_xe_late"]]
        late_runs = [x for s in first_view.values() for x in s["run_xe_late"]]
        replicates = run_level_replicates([column(m, 2) for m in view_means["first"]], late_runs, cfg.n_boot,
                                          cfg.boot_seed)
        result["power_law"] = fit_power_law(k_runs, late_runs, replicates)
    return result


def size_summary(runs, main_key, first, cfg):
    """First-component XE per (model size, K) over runs of the main group's dataset and budget."""
    dataset, _, budget = main_key
    cells = {}
    for r in runs:
        if r["key"][0] == dataset and r["key"][2] == budget and first in r["components"]:
            cells.setdefault((r["key"][1], r["eval"]["n_params"], r["k"]), []).append(r)
    if len({size for size, _, _ in cells}) < 2:
        return None
    rows = []
    for (size, n_params, k), cell in sorted(cells.items(), key=lambda kv: (kv[0][1], kv[0][2])):
        values, docs = stack_view(cell, [first])
        rows.append({"size": size, "n_params": n_params, "k": k, "n_seeds": len(cell),
                     "n_windows": values.shape[1], "xe_mean": crossed_mean(values.mean(-1), docs)})
    return rows


def budget_check(runs):
    """Per token budget: did every run train on the tokens it planned, the same for all, in equal steps?"""
    checks = []
    for budget in sorted({r["key"][2] for r in runs}):
        group = [r for r in runs if r["key"][2] == budget]
        problems, trained, steps = [], {}, {}
        for r in group:
            config = r["config"]
            epochs = config.get("schedule", {}).get("epochs") or config.get("config", {}).get("epochs") or 0
            planned = sum(config.get("mixture", {}).get("tokens", {}).values()) * epochs or None
            if r["done"] is None:
                problems.append(f"{r['name']}: no `done` marker (training did not finish)")
                tokens = r["eval"].get("tokens_trained")
            else:
                tokens = r["done"]["tokens"]
                steps.setdefault(r["key"][1], {})[r["name"]] = r["done"]["steps"]   # per model size
            trained[r["name"]] = tokens
            if planned is not None and tokens is not None and tokens != planned:
                problems.append(f"{r['name']}: trained on {tokens:,} tokens but its mixture x epochs is {planned:,}")
        if len(set(trained.values())) > 1:
            problems.append("runs trained on different token counts: " +
                            ", ".join(f"{n}={t:,}" if t is not None else f"{n}=?" for n, t in trained.items()))
        for size, per_run in steps.items():
            if len(set(per_run.values())) > 1:
                problems.append(f"{size} runs took different numbers of steps: " +
                                ", ".join(f"{n}={s:,}" for n, s in per_run.items()))
        checks.append({"token_budget": budget, "n_runs": len(group), "ok": not problems, "problems": problems,
                       "tokens": None if problems else next(iter(trained.values()))})
    return checks


# -----------------------------------------------------------------------------
# output: CSV, JSON, figures

def clean(obj):
    """JSON-safe: numpy scalars to Python, NaN/inf to None, tuple keys to strings."""
    if isinstance(obj, dict):
        return {str(k): clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, np.ndarray)):
        return [clean(v) for v in obj]
    if isinstance(obj, (np.floating, float)):
        return float(obj) if math.isfinite(obj) else None
    if isinstance(obj, np.integer):
        return int(obj)
    return obj


def results_rows(runs):
    rows = []
    for r in runs:
        ev = r["eval"]
        for cat, c in ev["categories"].items():
            row = {"run": r["name"], "dataset": ev["dataset"], "source": ev["source"], "K": r["k"],
                   "components": "+".join(r["components"]), "seed": r["seed"], "model_size": ev["model_size"],
                   "n_params": ev["n_params"], "token_budget": ev["token_budget"], "category": cat,
                   "in_mixture": c["in_mixture"], "n_windows": c["n_windows"]}
            for prefix, block in (("", c), ("bayes_", c.get("bayes")), ("oracle_", c.get("oracle"))):
                if block:
                    xe_t = np.asarray(block["xe_t"], dtype=float)
                    row.update({f"{prefix}xe_mean": block["xe_mean"], f"{prefix}xe_mean_bits": block["xe_mean_bits"],
                                f"{prefix}xe_early": xe_t[EARLY].mean(), f"{prefix}xe_late": xe_t[LATE].mean()})
            rows.append(row)
    return rows


def write_csv(path, rows):
    fields = list(dict.fromkeys(f for row in rows for f in row))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=fields, restval="", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_bytes(path, buffer.getvalue().encode())


def save_figure(fig, results_dir, name):
    for ext in ("png", "pdf"):
        buffer = io.BytesIO()
        fig.savefig(buffer, format=ext, dpi=150, bbox_inches="tight")
        atomic_write_bytes(os.path.join(results_dir, f"{name}.{ext}"), buffer.getvalue())
    plt.close(fig)
    return f"{name}.png"


def k_colours(ks):
    return {k: plt.cm.viridis(x) for k, x in zip(ks, np.linspace(0, 0.85, max(len(ks), 1)))}


def legend(ax):
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)


# what an interval covers (stats.interval_scope), shown the same way in every table and figure
SCOPE_MARKS = {"documents only": " †", "seeds only": " ‡"}
SCOPE_NOTES = {"documents only": "† one seed: the interval is over documents only; seed-to-seed variation is not "
                                  "in it.",
               "seeds only": "‡ one document: the interval is over seeds only; document sampling is not in it.",
               "n/a": "n/a: one seed and one document, so no interval can be estimated."}
SCOPE_FIGURE_NOTES = {"documents only": "open markers, hatched bands, †: one seed, interval over documents only",
                      "seeds only": "open markers with dashed bars, hatched bands, ‡: one document, interval over "
                                    "seeds only",
                      "n/a": "x: one seed and one document, no interval"}


def errorbar(ax, x, cells, metric, marker="o", line="", color="C0", label=None):
    """
    Points cells[k][metric] at x with their 95% intervals. The marker says what an interval covers:
    filled over seeds and documents, open over documents only (one seed) or over seeds only (one
    document, dashed bar), 'x' with no bar where there is no interval. Returns the scopes drawn.
    """
    intervals = [cells[k][metric] for k in x]
    xs = np.asarray(x, dtype=float)
    value = np.array([c["value"] for c in intervals], dtype=float)
    lo, hi = (np.array([c["ci"][i] for c in intervals], dtype=float) for i in (0, 1))
    scopes = [c.get("covers", "seeds and documents") for c in intervals]
    if line:
        ax.plot(xs, value, line, color=color)
    for covers in [s for s in SCOPES if s in scopes]:
        pick = [i for i, s in enumerate(scopes) if s == covers]
        bars = None if covers == "n/a" else [value[pick] - lo[pick], hi[pick] - value[pick]]   # t: symmetric
        drawn = ax.errorbar(xs[pick], value[pick], yerr=bars, fmt="x" if covers == "n/a" else marker, ls="none",
                            color=color, mfc=color if covers == "seeds and documents" else "white", capsize=3,
                            label=label)
        label = None
        if covers == "seeds only":
            for bar in drawn[2]:
                bar.set_linestyle("--")
    return set(scopes)


def scope_footnote(fig, scopes):
    """A line under the figure for every kind of partial interval it shows."""
    notes = [SCOPE_FIGURE_NOTES[s] for s in SCOPES if s in scopes and s in SCOPE_FIGURE_NOTES]
    if notes:
        fig.text(0.01, -0.02, "; ".join(notes), fontsize=7, ha="left", va="top")


def band(ax, interval, color, label):
    """A curve with its 95% band; hatched when the band is over documents only or seeds only."""
    ax.plot(POSITIONS, interval["value"], color=color, label=label + SCOPE_MARKS.get(interval["covers"], ""))
    partial = interval["covers"] != "seeds and documents"
    ax.fill_between(POSITIONS, *np.asarray(interval["ci"], dtype=float), color=color, alpha=0.12 if partial else 0.2,
                    hatch="///" if partial else None)
    return {interval["covers"]}


def figure_xe_vs_k(analysis, results_dir):
    views = analysis["views"]
    fig, axes = plt.subplots(1, len(views), figsize=(4 * len(views), 3.4), squeeze=False)
    scopes = set()
    for ax, (view, cells) in zip(axes[0], views.items()):
        ks = sorted(cells)
        scopes |= errorbar(ax, ks, cells, "xe_mean", marker="o", line="-", color="C0", label="model (95% CI)")
        for k in ks:
            ax.plot([k] * len(cells[k]["run_xe_mean"]), cells[k]["run_xe_mean"], ".", color="C0", alpha=0.4)
        for kind, style, colour in (("bayes", "s--", "grey"), ("oracle", ":", "black")):
            if all(f"{kind}_mean" in cells[k] for k in ks):
                ax.plot(ks, [cells[k][f"{kind}_mean"]["value"] for k in ks], style, color=colour, label=kind)
        title = VIEWS[view] + (f" ({analysis['first']})" if view == "first" else "")
        ax.set(title=title, xlabel="K (components in training mix)", xticks=ks)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("XE, mean over t=1..100 (nats)")
    legend(axes[0][0])
    scope_footnote(fig, scopes)
    return save_figure(fig, results_dir, "fig_xe_vs_k")


def figure_positions(analysis, results_dir):
    ks, colours, curves = analysis["ks"], k_colours(analysis["ks"]), analysis["curves"]
    fig, (ax, ax_excess) = plt.subplots(1, 2, figsize=(11, 4))
    scopes = set()
    for k in ks:
        scopes |= band(ax, curves[k]["xe_t"], colours[k], f"K={k}")
        if "bayes_t" in curves[k]:
            ax.plot(POSITIONS, curves[k]["bayes_t"], "--", color=colours[k], lw=1)
        if k in analysis["excess_t"]:
            scopes |= band(ax_excess, analysis["excess_t"][k], colours[k], f"K={k} - K={ks[0]}")
            if "bayes_t" in curves[k]:
                ax_excess.plot(POSITIONS, np.subtract(curves[k]["bayes_t"], curves[ks[0]]["bayes_t"]),
                               "--", color=colours[k], lw=1)
    if "oracle_t" in curves[ks[0]]:
        ax.plot(POSITIONS, curves[ks[0]]["oracle_t"], "k:", label="oracle")
    ax.set(xscale="log", xlabel="position t (tokens of context)", ylabel="XE(t) (nats)",
           title=f"{analysis['first']}: model (solid), Bayes-optimal (dashed)")
    ax_excess.axhline(0, color="grey", lw=0.8)
    ax_excess.set(xscale="log", xlabel="position t", ylabel=f"XE_K(t) - XE_{ks[0]}(t) (nats)",
                  title="paired excess over the reference K (95% CI)")
    for a in (ax, ax_excess):
        a.grid(alpha=0.3, which="both")
        legend(a)
    scope_footnote(fig, scopes)
    return save_figure(fig, results_dir, "fig_xe_position")


def figure_excess_area(analysis, results_dir):
    ks, areas = analysis["ks"], analysis["areas"]
    x = np.log(ks[1:])
    fig, ax = plt.subplots(figsize=(5.5, 4))
    scopes = set()
    for key, style, colour, label in (("model", "o", "C0", "model A_K"),
                                      ("identification", "^", "C1", "model, above late level"),
                                      ("bayes", "s", "C2", "Bayes-optimal A_K")):
        if all(key in areas[k] for k in ks[1:]):
            scopes |= errorbar(ax, x, {lk: areas[k] for lk, k in zip(x, ks[1:])}, key, marker=style,
                               color=colour, label=label)
    grid = np.linspace(0, max(x.max(), 0.1), 50)
    ax.plot(grid, grid, "k--", label="ln K bound (identification)")
    ax.axhline(0, color="grey", lw=0.8)
    ax.set(xlabel=f"ln K  (relative to K={ks[0]})", ylabel="excess area sum_t [XE_K(t) - XE_1(t)] (nats)",
           title=f"{analysis['first']}: excess area over K={ks[0]}")
    ax.grid(alpha=0.3)
    legend(ax)
    scope_footnote(fig, scopes)
    return save_figure(fig, results_dir, "fig_excess_area")


def figure_late_power_law(analysis, results_dir):
    cells, fit, ks = analysis["views"]["first"], analysis.get("power_law"), analysis["ks"]
    fig, (ax, ax_excess) = plt.subplots(1, 2, figsize=(10, 3.8))
    scopes = errorbar(ax, ks, cells, "xe_late", marker="o", color="C0", label="model (95% CI)")
    for k in ks:
        ax.plot([k] * len(cells[k]["run_xe_late"]), cells[k]["run_xe_late"], ".", color="C0", alpha=0.4)
    if all("bayes_late" in cells[k] for k in ks):
        ax.plot(ks, [cells[k]["bayes_late"]["value"] for k in ks], "s--", color="grey", label="Bayes-optimal")
    grid = np.linspace(min(ks), max(ks), 100)
    if fit and "params" in fit:
        a, c, beta = (fit["params"][n]["value"] for n in ("a", "c", "beta"))
        ax.plot(grid, power_law(grid, a, c, beta), "C1-",
                label=f"E + B K^beta, beta = {beta:.2f}" + SCOPE_MARKS.get(fit.get("covers"), ""))
        ax_excess.plot(grid, power_law(grid, 0, c, beta) - power_law(ks[0], 0, c, beta), "C1-", label="fit")
    late_excess = {c["k"]: {"difference": c["difference"]} for c in analysis["contrasts"] if c["metric"] == "xe_late"}
    scopes |= errorbar(ax_excess, ks[1:], late_excess, "difference", marker="o", color="C0",
                       label="paired excess (95% CI)")
    ax.set(xlabel="K", ylabel="XE, mean over t=51..100 (nats)", xticks=ks, title=f"{analysis['first']}: late positions")
    ax_excess.axhline(0, color="grey", lw=0.8)
    ax_excess.set(xlabel="K", ylabel=f"late XE_K - late XE_{ks[0]} (nats)", xticks=ks, title="data-scarcity excess")
    for a in (ax, ax_excess):
        a.grid(alpha=0.3)
        legend(a)
    scope_footnote(fig, scopes)
    return save_figure(fig, results_dir, "fig_late_power_law")


def figure_model_size(rows, results_dir):
    fig, ax = plt.subplots(figsize=(5.5, 4))
    ks = sorted({r["k"] for r in rows})
    colours, scopes = k_colours(ks), set()
    for k in ks:
        sub = [r for r in rows if r["k"] == k]
        cells = {r["n_params"]: r for r in sub}
        scopes |= errorbar(ax, sorted(cells), cells, "xe_mean", marker="o", line="-", color=colours[k], label=f"K={k}")
    ax.set(xscale="log", xlabel="parameters", ylabel="XE, mean over t (nats)", title="first component vs model size")
    ax.grid(alpha=0.3, which="both")
    legend(ax)
    scope_footnote(fig, scopes)
    return save_figure(fig, results_dir, "fig_model_size")


def figure_dataset(dataset_stats, results_dir):
    rows = dataset_stats["rows"]
    categories = list(dict.fromkeys(r["category"] for r in rows))
    splits = list(dict.fromkeys(r["split"] for r in rows))
    tokens = {(r["category"], r["split"]): r["tokens"] for r in rows}
    fig, ax = plt.subplots(figsize=(max(6, 0.7 * len(categories) + 2), 4))
    width = 0.8 / len(splits)
    for i, split in enumerate(splits):
        ax.bar(np.arange(len(categories)) + i * width, [max(tokens.get((c, split), 0), 1) for c in categories],
               width, label=split)
    ax.set_xticks(np.arange(len(categories)) + 0.4 - width / 2)
    order = dataset_stats.get("default_order", [])
    ax.set_xticklabels([f"{c}\n(#{order.index(c) + 1})" if c in order else c for c in categories], fontsize=8)
    ax.set(yscale="log", ylabel="tokens", title="dataset composition (#n: position in default order)")
    legend(ax)
    ax.grid(alpha=0.3, axis="y")
    return save_figure(fig, results_dir, "fig_dataset")


def figure_training(runs, results_dir):
    ks = sorted({r["k"] for r in runs})
    colours = k_colours(ks)
    fig, (ax_train, ax_val) = plt.subplots(1, 2, figsize=(11, 4))
    for r in runs:
        train = [e for e in r["log"] if e.get("kind") == "train"]
        val = [e for e in r["log"] if e.get("kind") == "val"]
        label = f"K={r['k']}" if r is next(x for x in runs if x["k"] == r["k"]) else None
        ax_train.plot([e["tokens"] for e in train], [e["loss"] for e in train], color=colours[r["k"]],
                      lw=0.8, alpha=0.7, label=label)
        ax_val.plot([e["tokens"] for e in val], [e["val_loss"] for e in val], "o-", ms=3,
                    color=colours[r["k"]], alpha=0.7, label=label)
    ax_train.set(xlabel="training tokens", ylabel="train loss (nats)", title="training loss (one line per run)")
    ax_val.set(xlabel="training tokens", ylabel="validation loss (nats)", title="validation loss (mixture val split)")
    for a in (ax_train, ax_val):
        a.grid(alpha=0.3)
        legend(a)
    return save_figure(fig, results_dir, "fig_training")


# -----------------------------------------------------------------------------
# REPORT.md: an introduction, the budget check, then one section per figure with its numbers

def number(v, digits=3):
    return "n/a" if v is None or not math.isfinite(v) else f"{v:.{digits}f}"


def fmt(ci, digits=3):
    """'value [lo, hi]' for an interval dict, marked with what it covers (SCOPE_MARKS); 'value (n/a)' with none."""
    if ci is None:
        return "n/a"
    if ci.get("covers") == "n/a":
        return f"{number(ci['value'], digits)} (n/a)"
    return (f"{number(ci['value'], digits)} [{number(ci['ci'][0], digits)}, {number(ci['ci'][1], digits)}]"
            + SCOPE_MARKS.get(ci.get("covers"), ""))


def scope_notes(intervals):
    """The footnotes for the partial intervals among `intervals` (dicts with "covers"), one per kind."""
    present = {i.get("covers") for i in intervals if i}
    return [SCOPE_NOTES[s] for s in SCOPES if s in present and s in SCOPE_NOTES]


def fit_interval(fit, name):
    """A fitted parameter as an interval dict that carries the fit's scope."""
    p = fit["params"][name]
    return {"value": p["value"], "ci": p["ci95"], "covers": fit.get("covers")}


def fmt_fit(fit):
    if not fit:
        return "not fitted"
    if "params" not in fit:
        return f"fit failed ({fit.get('error', '?')})"
    return ", ".join(f"{n} = {fmt(fit_interval(fit, n))}" for n in fit["params"]) + \
        f" ({fit['n_points']} points, rmse {fit['rmse']:.3g})"


def fmt_position_fit(fit):
    """One report line for a position_law fit: x1, d, c, then the asymptote or why there is none."""
    if not fit or "params" not in fit:
        return fmt_fit(fit)
    p = fit["params"]
    ci = {n: fit_interval(fit, n) for n in p}
    text = (f"x1 = {fmt(ci['x1'])}, d = {fmt(ci['d'])}, c = {fmt(ci['c'])}"
            + (f" (at its bound {min(fit['c_bounds'], key=lambda b: abs(b - p['c']['value'])):g})"
               if p["c"].get("at_bound") else "")
            + f", {fit['n_points']} points, rmse {fit['rmse']:.3g}; ")
    if fit.get("asymptote"):
        return text + f"asymptote a = x1 - d/c = {fmt(ci['a'])}"
    if fit.get("cov") is None:
        return text + "no interval for c, so no asymptote estimate"
    if p["d"]["ci95"][0] <= 0 <= p["d"]["ci95"][1]:
        return text + ("d's interval includes 0: XE(t) is flat within the noise, so c is not identified and no "
                       "asymptote is estimated")
    return (text + f"c's interval reaches 0: logarithmic within t = 1..{fit['n_points']} "
            f"(about x1 - d ln t), no finite asymptote estimate")


def fmt_p(p):
    return "n/a" if p is None or not math.isfinite(p) else (f"{p:.2g}" if p >= 1e-4 else "<1e-4")


def single_seed_note(trend, n_ks):
    """What the trend test's p-value rests on when some K has one run."""
    ks = trend.get("single_seed_ks") or []
    if not ks:
        return ""
    if len(ks) == n_ks:
        return (" Every K has a single seed: the p-value rests on one run per K, where seed-to-seed noise and "
                "lack of fit are one and the same.")
    return f" The p-value rests on a single seed at K = {', '.join(str(k) for k in ks)}."


def xe_vs_k_tables(ctx):
    """Per view: XE per K with intervals, the trend test and the ln K fit; then the paired contrasts."""
    a, synthetic, lines = ctx["analysis"], ctx["synthetic"], []
    extra = " Bayes mean | oracle mean |" if synthetic else ""
    for view, cells in a["views"].items():
        lines += [f"**{VIEWS[view]}**" + (f" `{a['first']}`" if view == "first" else ""), "",
                  "| K | seeds | windows (docs) | categories | XE mean | XE t=1..10 | XE t=51..100 |" + extra,
                  "|---" * (7 + 2 * synthetic) + "|"]
        for k, s in cells.items():
            lines.append(f"| {k} | {s['n_seeds']} | {s['n_windows']} ({s['n_docs']}) | {', '.join(s['categories'])} "
                         f"| {fmt(s['xe_mean'])} | {fmt(s['xe_early'])} | {fmt(s['xe_late'])} |" +
                         (f" {fmt(s.get('bayes_mean'))} | {fmt(s.get('oracle_mean'))} |" if synthetic else ""))
        notes = scope_notes([s["xe_mean"] for s in cells.values()] + [a["lnK_fits"].get(view)])
        lines += [""] + notes if notes else []
        trend = a["trend"].get(view)
        if trend:
            lines += ["", f"Trend (regression of run-level XE on K, {trend['n_runs']} runs): slope "
                      f"{fmt({'value': trend['slope'], 'ci': trend['slope_ci']}, 4)} nats per component, "
                      f"p = {fmt_p(trend['p_value'])}; Spearman rho = {number(trend['spearman_rho'], 2)}, "
                      f"p = {fmt_p(trend['spearman_p'])}.{single_seed_note(trend, len(cells))} "
                      f"Fit XE = a + b ln K: {fmt_fit(a['lnK_fits'].get(view))}."]
        else:
            lines += ["", "No trend test or ln K fit: they need at least 3 runs over at least 2 values of K."]
        lines.append("")
    if a.get("contrasts"):
        c0 = a["contrasts"][0]
        lines += [f"**Paired contrasts against K={c0['reference_k']}** on `{a['first']}` ({c0['n_windows']} shared "
                  f"windows from {c0['n_docs']} documents; two-sided t-test p on the same t reference as the "
                  f"interval; Holm-adjusted across the K contrasts of each metric):", "",
                  "| K | metric | difference (nats) | p | p (Holm) | seeds (K / ref) |", "|---|---|---|---|---|---|"]
        lines += [f"| {c['k']} | {c['metric']} | {fmt(c['difference'], 4)} | {fmt_p(c['p_value'])} | "
                  f"{fmt_p(c['p_holm'])} | {c['n_seeds']} / {c['n_seeds_reference']} |" for c in a["contrasts"]]
        notes = scope_notes([c["difference"] for c in a["contrasts"]])
        if any(c.get("holm_single_seed") for c in a["contrasts"]):
            notes.append("The p-values of marked rows rest on a single seed (or document), so they test less "
                         "than the others; the Holm-adjusted p-values of their metric lean on them too.")
        lines += [""] + notes if notes else []
    return lines


def power_law_line(fit):
    if not fit:
        return "Power law not fitted: it needs at least 3 values of K."
    line = f"Power law: {fmt_fit(fit)}."
    if "params" in fit and fit.get("cov") is not None and not fit.get("E_B"):
        line += (" beta's interval includes 0: within these K the late XE is not distinguishable from logarithmic "
                 "in K (a + c ln K), so E and B have no finite estimate and are not reported.")
    return line


def figure_sections(ctx):
    """Draw every figure the data supports; markdown sections (figure, caption, numbers) and skip notes."""
    a, results_dir, synthetic = ctx["analysis"], ctx["cfg"].results, ctx["synthetic"]
    ks, first, sections, images, notes = a["ks"], a["first"], [], [], []

    def section(title, image, caption, body=()):
        images.append(image)
        sections.append("\n".join([f"## {title}", "", f"![{title}]({image})", "", f"*{caption}*", "", *body, ""]))

    section("XE against K", figure_xe_vs_k(a, results_dir),
            "Figure 1. Mean XE over positions t = 1..100 against K, per evaluation view; dots are single seeds, "
            "error bars 95% intervals" + (", dashed the Bayes-optimal predictor of each run's training "
            "mixture, dotted the oracle that knows the component" if synthetic else "") + ".", xe_vs_k_tables(ctx))
    if first is not None:
        fits = [f"- K={k}: {fmt_position_fit(f)}" for k, f in a["position_fits"].items()]
        section("XE against position", figure_positions(a, results_dir),
                f"Figure 2. XE(t) on `{first}` per K (log position axis; bands: 95% CI over seeds and documents)" +
                ("; dashed: Bayes-optimal predictor of each K's mixture; dotted: oracle" if synthetic else "") +
                f". Right: paired excess XE_K(t) - XE_{ks[0]}(t).",
                [f"Fitted to the mean curve, weighted by each position's standard error: "
                 f"{law_explanation(position_law)} "
                 f"c is constrained to [{POSITION_C_BOUNDS[0]:g}, {POSITION_C_BOUNDS[1]:g}] (its interval clipped to "
                 f"that range).", ""]
                + fits)
    if first is not None and len(ks) > 1:
        rows = [f"| {k} | {x['bound']:.3f} | {fmt(x['model'])} | {fmt(x['identification'])} |" +
                (f" {fmt(x.get('bayes'))} |" if synthetic else "") for k, x in a["areas"].items()]
        section("Excess area against ln K", figure_excess_area(a, results_dir),
                f"Figure 3. A_K = sum over t = 1..100 of the paired excess XE_K(t) - XE_{ks[0]}(t) on `{first}` against "
                f"ln K; dashed: the identification bound y = ln K. Triangles: A_K minus 100 x the late-position "
                f"excess, the part of the area that sits at early positions (identification).",
                ["| K | ln K | A_K model | model above late level |" + (" A_K Bayes |" if synthetic else ""),
                 "|---" * (4 + synthetic) + "|"] + rows)
        fit = a.get("power_law")
        section("Late-position XE against K", figure_late_power_law(a, results_dir),
                f"Figure 4. Mean XE over t = 51..100 on `{first}` against K with the fitted XE_late(K) = E + B K^beta "
                f"(least squares over run-level points). {law_explanation(power_law)} Right: the paired late excess "
                f"over K={ks[0]}, which the fit predicts as c (K^beta - 1) / beta.",
                [power_law_line(fit)])
    else:
        notes.append("Figures 2-4 (positions, excess area, late-position law): they need a component in every "
                     "mixture and, for 3 and 4, at least two values of K.")
    if ctx["sizes"]:
        section("XE against model size", figure_model_size(ctx["sizes"], results_dir),
                f"Figure 5. Mean XE on `{first}` against parameter count, one line per K (95% CIs).",
                [f"- {r['size']} ({r['n_params']:,} params), K={r['k']}: {fmt(r['xe_mean'])} "
                 f"({r['n_seeds']} seeds, {r['n_windows']} windows)" for r in ctx["sizes"]])
    else:
        notes.append("Figure 5 (model size): only one model size ran.")
    if ctx["dataset_stats"]:
        s = ctx["dataset_stats"]
        section("Dataset composition", figure_dataset(s, results_dir),
                f"Figure 6. Tokens per category and split (log scale). Default order (K = 1..5): "
                f"{', '.join(s.get('default_order', []))}; default budget {s.get('default_budget', 0):,} tokens.")
    else:
        notes.append("Figure 6 (dataset composition): stats.json not found under the runs' data_dir." +
                     ("" if ctx["order_known"] else " Without it the default order is unknown: the 'top five' "
                      "view is the components the runs used, up to five."))
    section("Training curves", figure_training(ctx["main_runs"], results_dir),
            "Figure 7. Training loss (left) and validation loss on the mixture's val split (right) against "
            "training tokens, one line per run, coloured by K.")
    return sections, images, notes


def report(ctx, sections, notes):
    a, main_runs, cfg = ctx["analysis"], ctx["main_runs"], ctx["cfg"]
    dataset, size, budget = ctx["main_key"]
    seeds = {k: sum(r["k"] == k for r in main_runs) for k in a["ks"]}
    lines = [f"# In-context cross entropy against the number of components K ({dataset})", "",
             f"Generated by `python plot.py` from {len(ctx['runs'])} evaluated run(s) in `{cfg.out}/`. "
             f"Main group: dataset **{dataset}** ({main_runs[0]['eval']['source']}), model **{size}** "
             f"({main_runs[0]['eval']['n_params']:,} parameters), token budget **{budget:,}** tokens; "
             + ", ".join(f"K={k}: {n} seed(s)" for k, n in seeds.items()) +
             ". Every run is scored on the same fixed test windows, so comparisons across K are paired. XE is "
             "in nats per token.", "",
             "**Intervals.** Each 95% interval (in brackets) is estimate +- t x standard error and generalises "
             "over new seeds and new documents: the variance adds the seed and the document terms of the crossed "
             "seeds x documents design, and the t quantile's Satterthwaite degrees of freedom make the interval "
             "pay for estimating seed-to-seed variation from a few seeds (method: stats.py; coverage by "
             "simulation: BENCHMARKS.md). Paired contrasts and their p-values use the same t. Fitted laws get "
             f"their intervals from refitting on {cfg.n_boot} perturbed replicates per source of chance. A mark "
             "says when an interval covers less: † documents only (one seed), ‡ seeds only (one document); "
             "n/a: no interval (one of each).", ""]
    if min(seeds.values()) == 1:
        lines += ["**Note:** at least one K has a single seed; its intervals (marked †) cover document sampling "
                  "only, not seed-to-seed variation.", ""]
    if a["first"] is None:
        lines += ["**Note:** no category is in every run's mixture: no per-position, excess-area or late-position "
                  "analysis.", ""]
    lines += ["## Budget check", ""]
    for check in ctx["budget"]:
        if check["ok"]:
            lines.append(f"- token budget {check['token_budget']:,}: all {check['n_runs']} runs trained on "
                         f"{check['tokens']:,} tokens.")
        else:
            lines.append(f"- **token budget {check['token_budget']:,}: DISCREPANCIES among {check['n_runs']} runs:**")
            lines += [f"  - **{p}**" for p in check["problems"]]
    lines += [""] + sections
    if notes:
        lines += ["## Skipped", ""] + [f"- {note}" for note in notes] + [""]
    if ctx["other_groups"]:
        lines += ["## Other groups (in results.csv only)", ""] + \
                 [f"- {d} / {s} / budget {b:,}: {n} run(s)" for (d, s, b), n in ctx["other_groups"].items()] + [""]
    lines += ["## Runs not evaluated or left out", ""] + ([f"- `{n}`: {why}" for n, why in ctx["skipped"].items()] or ["- none"])
    lines += ["", "Files: [results.csv](results.csv) (one row per run and evaluation category), "
              "[fits.json](fits.json) (every fit, interval and test).", ""]
    return "\n".join(lines)


# -----------------------------------------------------------------------------

def main(argv):
    cfg = SimpleNamespace(**configure(config_defaults(globals()), argv))
    runs, skipped = load_runs(cfg.out)
    if not runs:
        raise UserError(f"no evaluated runs in {cfg.out}/; run `python evaluate.py {cfg.out}/<run>` "
                        f"(or `bash sweep.sh`) first")
    # every comparison pairs windows across runs: a run scored on another evaluation set is left out
    for dataset in {r["eval"]["dataset"] for r in runs}:
        shas = [r["eval"].get("evalset", {}).get("sha") for r in runs if r["eval"]["dataset"] == dataset]
        common = max(set(shas), key=shas.count)
        for r in [r for r in runs if r["eval"]["dataset"] == dataset and r["eval"].get("evalset", {}).get("sha") != common]:
            skipped[r["name"]] = (f"evaluated on a different evaluation set than the other {dataset} runs; "
                                  f"re-run `python evaluate.py {r['dir']} --force`")
            runs.remove(r)
    print(f"{len(runs)} evaluated run(s) in {cfg.out}/" + (f", {len(skipped)} skipped" if skipped else ""))
    groups = {}
    for r in runs:
        groups.setdefault(r["key"], []).append(r)
    main_key = max(sorted(groups), key=lambda key: len(groups[key]))    # most runs; ties: first in order
    main_runs = groups[main_key]
    # the dataset's default order names the first component and the top five
    stats_path = next(filter(None, (dataset_file(r, "stats.json", cfg.out) for r in main_runs)), None)
    meta_path = next(filter(None, (dataset_file(r, "meta.json", cfg.out) for r in main_runs)), None)
    dataset_stats = read_json(stats_path) if stats_path else None
    default_order = (dataset_stats or (read_json(meta_path) if meta_path else {})).get("default_order")
    if not default_order:     # no dataset files here: the runs' own components, in order of K
        default_order = list(dict.fromkeys(c for r in main_runs for c in r["components"]))
        print("warning: no stats.json/meta.json found; 'top5' means the components the runs used")
    shared = set.intersection(*({c for c in r["components"] if c in r["eval"]["categories"]} for r in main_runs))
    first = next((c for c in default_order + main_runs[0]["components"] if c in shared), None)
    print(f"main group: {main_key[0]} / {main_key[1]} / budget {main_key[2]:,}: {len(main_runs)} runs; "
          f"first component {first}; {cfg.n_boot} replicates per source for the fits' intervals")

    analysis = analyse_group(main_runs, first, default_order[:5], cfg)
    ctx = {"cfg": cfg, "runs": runs, "skipped": skipped, "main_key": main_key, "main_runs": main_runs,
           "analysis": analysis, "dataset_stats": dataset_stats, "order_known": bool(stats_path or meta_path),
           "synthetic": all(r["eval"]["source"] == "synthetic" for r in main_runs),
           "sizes": size_summary(runs, main_key, first, cfg) if first else None, "budget": budget_check(runs),
           "other_groups": {key: len(g) for key, g in groups.items() if key != main_key}}

    os.makedirs(cfg.results, exist_ok=True)
    rows = results_rows(runs)
    write_csv(os.path.join(cfg.results, "results.csv"), rows)
    sections, images, notes = figure_sections(ctx)
    drawn = {image.rsplit(".", 1)[0] for image in images}
    for name in os.listdir(cfg.results):                   # figures this data no longer supports
        if name.startswith("fig_") and name.rsplit(".", 1)[0] not in drawn:
            os.remove(os.path.join(cfg.results, name))
    write_json(os.path.join(cfg.results, "fits.json"), clean({
        "group": {"dataset": main_key[0], "model_size": main_key[1], "token_budget": main_key[2],
                  "runs": [r["name"] for r in main_runs]},
        "n_boot": cfg.n_boot, "first_component": first, "views": analysis["views"],
        "fits": {"xe_mean_vs_lnK": analysis["lnK_fits"], "late_power_law": analysis.get("power_law"),
                 "position_curves": analysis.get("position_fits")},
        "tests": {"trend": analysis["trend"], "contrasts_vs_reference_k": analysis.get("contrasts")},
        "excess_area": analysis.get("areas"), "model_size": ctx["sizes"], "budget_check": ctx["budget"]}))
    atomic_write_bytes(os.path.join(cfg.results, "REPORT.md"), report(ctx, sections, notes).encode())

    for check in ctx["budget"]:
        print(f"budget {check['token_budget']:,}: " + (f"all {check['n_runs']} runs trained on {check['tokens']:,} "
              f"tokens" if check["ok"] else "DISCREPANCIES: " + "; ".join(check["problems"])))
    for view, cells in analysis["views"].items():
        print(f"{view:>6}: " + "  ".join(f"K={k} {fmt(s['xe_mean'])}" for k, s in cells.items()))
    if analysis.get("power_law"):
        print(f"late power law: {fmt_fit(analysis['power_law'])}")
    print(f"wrote {len(rows)} rows to {cfg.results}/results.csv, {len(drawn)} figures (png+pdf), fits.json; "
          f"report: {os.path.join(cfg.results, 'REPORT.md')}")


if __name__ == "__main__":
    run_cli(main)
