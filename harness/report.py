"""
REPORT.md's text: tables, captions and methods notes, each written once here, and a conclusion
generated from the numbers (every sentence of it is built from computed values). analysis.py
computes what is written, plot.py draws the figures and calls `document`.
"""
import math
from dataclasses import dataclass

from harness.analysis import VIEWS, Interval
from harness.data import POSITION_RANGES, range_label
from harness.stats import SCOPES
from harness.laws import POSITION_C_BOUNDS, law_explanation, position_law, power_law

METRIC_LABELS = {m: range_label(m) for m in POSITION_RANGES}
# what an interval covers (stats.interval_scope), shown the same way in every table and figure
SCOPE_MARKS = {"documents only": " †", "seeds only": " ‡"}
SCOPE_NOTES = {
    "documents only": "† one seed: the interval is over documents only; seed-to-seed variation is not in it.",
    "seeds only": "‡ one document: the interval is over seeds only; document sampling is not in it.",
    "n/a": "n/a: one seed and one document, so no interval can be estimated."}
SCOPE_FIGURE_NOTES = {
    "documents only": "open markers, hatched bands or bars, †: one seed, interval over documents only",
    "seeds only": "open markers with dashed bars, hatched bands or bars, ‡: one document, interval over "
                  "seeds only",
    "n/a": "x or no error bar: one seed and one document, no interval"}
CHOICE = {"group": "chosen with --group", "defaults": "the experiment the current defaults make",
          "largest": "no experiment matches the current defaults: the one with the most runs"}


# -----------------------------------------------------------------------------
# numbers

def number(v, digits=3):
    return "n/a" if v is None or not math.isfinite(v) else f"{v:.{digits}f}"


def fmt(ci, digits=3):
    """'value [lo, hi]' for an Interval, marked with what it covers (SCOPE_MARKS); 'value (n/a)' with none."""
    if ci is None:
        return "n/a"
    if ci.covers == "n/a":
        return f"{number(ci.value, digits)} (n/a)"
    return (f"{number(ci.value, digits)} [{number(ci.ci[0], digits)}, {number(ci.ci[1], digits)}]"
            + SCOPE_MARKS.get(ci.covers, ""))


def fmt_p(p):
    return "n/a" if p is None or not math.isfinite(p) else (f"{p:.2g}" if p >= 1e-4 else "<1e-4")


def scope_notes(intervals):
    """The footnotes for the partial intervals among `intervals` (Intervals or fits), one per kind."""
    present = {i.covers if isinstance(i, Interval) else i.get("covers") for i in intervals if i}
    return [SCOPE_NOTES[s] for s in SCOPES if s in present and s in SCOPE_NOTES]


def fit_interval(fit, name):
    """A fitted parameter as an Interval that carries the fit's scope."""
    p = fit["params"][name]
    return Interval(p["value"], p["ci95"], fit.get("covers"))


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
        return text + ("d's interval includes 0: XE(t) is flat within the noise, so c is not identified and "
                       "no asymptote is estimated")
    return (text + f"c's interval reaches 0: logarithmic within t = 1..{fit['n_points']} "
            f"(about x1 - d ln t), no finite asymptote estimate")


def power_law_line(fit):
    if not fit:
        return "Power law not fitted: it needs at least 3 values of K."
    line = f"Power law: {fmt_fit(fit)}."
    if "params" in fit and fit.get("cov") is not None and not fit.get("E_B"):
        line += (" beta's interval includes 0: within these K the late XE is not distinguishable from "
                 "logarithmic in K (a + c ln K), so E and B have no finite estimate and are not reported.")
    return line


def single_seed_note(trend, n_ks):
    """What the trend test's p-value rests on when some K has one run."""
    ks = trend.get("single_seed_ks") or []
    if not ks:
        return ""
    if len(ks) == n_ks:
        return (" Every K has a single seed: the p-value rests on one run per K, where seed-to-seed noise "
                "and lack of fit are one and the same.")
    return f" The p-value rests on a single seed at K = {', '.join(str(k) for k in ks)}."


def runs_per_k(runs):
    counts = {}
    for r in runs:
        counts[r.k] = counts.get(r.k, 0) + 1
    return ", ".join(f"K={k}: {n}" for k, n in sorted(counts.items())) or "none"


# -----------------------------------------------------------------------------
# the introduction, the experiments and the checks

METHODS = ("**Intervals.** Each 95% interval (in brackets) is estimate +- t x standard error and "
           "generalises over new seeds and new documents: the variance adds the seed and the document terms "
           "of the crossed seeds x documents design, and the t quantile's Satterthwaite degrees of freedom "
           "make the interval pay for estimating seed-to-seed variation from a few seeds (method: stats.py; "
           "coverage by simulation: BENCHMARKS.md). Paired contrasts and their p-values use the same t. "
           "Fitted laws get their intervals from refitting on {n_boot} perturbed replicates per source of "
           "chance. A mark says when an interval covers less: † documents only (one seed), ‡ seeds only (one "
           "document); n/a: no interval (one of each).")


def intro(s):
    a, ev = s.analysis, s.main.runs[0].eval
    seeds = {k: len(cell.runs) for k, cell in a.views["first"].cells.items()} if "first" in a.views else \
        {k: sum(r.k == k for r in s.main.runs) for k in a.ks}
    lines = [f"# In-context cross entropy against the number of components K ({ev['dataset']})", "",
             f"Generated by `python plot.py` from {len(s.runs)} evaluated run(s) in `{s.out}/`. Main "
             f"experiment `{s.main.id[:12]}`: dataset **{ev['dataset']}** ({ev['source']}), model "
             f"**{ev['model_size']}** ({ev['n_params']:,} parameters), token budget "
             f"**{int(ev['token_budget']):,}** tokens; " + ", ".join(f"K={k}: {n} seed(s)"
                                                                      for k, n in seeds.items())
             + ". Every run is scored on the same fixed test windows, so comparisons across K are paired. "
             "XE is in nats per token.", "", METHODS.format(n_boot=s.n_boot), ""]
    if min(seeds.values()) == 1:
        lines += ["**Note:** at least one K has a single seed; its intervals (marked †) cover document "
                  "sampling only, not seed-to-seed variation.", ""]
    if a.first is None:
        lines += ["**Note:** no category is in every run's mixture: no per-position, excess-area, "
                  "late-position or decomposition analysis.", ""]
    return lines


def experiments_section(s):
    """The main experiment and every other one with how it differs (runs of two experiments never pool)."""
    lines = ["## Experiments", "",
             "An experiment is the runs that share every setting that changes their numbers except seed and "
             "K, K's mixture being the first K components of the default order at equal weights, or one "
             "named explicitly (runs.experiment_config), the data and the code that made the numbers "
             "(train.py, model.py and the data and mixture code, without comments or docstrings: "
             "runs.code_fingerprint); runs of different experiments never pool. This "
             f"report is about `{s.main.id[:12]}` ({CHOICE[s.choice]}; `--group=<id prefix>` picks "
             "another). Every run of every experiment is in results.csv (column `experiment`).", "",
             f"| experiment | runs per K | controls per K | differs from `{s.main.id[:8]}` in | first "
             "component XE mean per K |", "|---|---|---|---|---|"]
    for other in s.experiments:
        x = other.experiment
        diff = "(main)" if x is s.main else "; ".join(
            f"{d.key} = {d.other!r} (main: {d.main!r})" for d in other.differences) or "nothing"
        if other.budget is not None and not other.budget.ok:
            diff += " **(budget check failed)**"
        xe = ", ".join(f"K={k}: {number(c.xe_mean.value)}" for k, c in other.first_cells.items()) or "n/a"
        lines.append(f"| `{x.id[:12]}` | {runs_per_k(x.runs)} | {runs_per_k(x.controls)} | {diff} | {xe} |")
    unknown = [other.experiment.id[:12] for other in s.experiments
               if (other.experiment.runs or other.experiment.controls)[0].code is None]
    if unknown:
        lines += ["", f"Code unknown: {', '.join(f'`{e}`' for e in unknown)} holds runs recorded before the code "
                      "entered a run's identity; they form their own experiment, never pooled with runs "
                      "whose code is known. Retrain them to compare."]
    return lines + [""]


def budget_section(s):
    check = s.budget
    lines = ["## Budget check", ""]
    if check.ok:
        lines.append(f"- token budget {check.token_budget:,}: all {check.n_runs} runs trained on "
                     f"{check.tokens:,} tokens in {s.main.runs[0].done['steps']:,} steps.")
    else:
        lines.append(f"- **token budget {check.token_budget:,}: DISCREPANCIES among {check.n_runs} runs:**")
        lines += [f"  - **{p}**" for p in check.problems]
    if not s.controls:
        return lines + [""]
    lines += ["", "Controls are their own family: each must take the steps of the K-mixture run it mirrors "
              "(same K and seed; up to one step per epoch of rounding) on exactly the first component's "
              "share of that mixture.", "",
              "| K | seed | control | steps (control / mixture) | tokens trained (control / mixture) | first "
              "component's tokens (control / mixture) | check |", "|---|---|---|---|---|---|---|"]
    for c in s.controls:
        pair = lambda x: " / ".join("?" if v is None else f"{v:,}" for v in x)    # noqa: E731
        verdict = "ok" if c.ok else ("**no mixture run**" if c.mixture is None else "**MISMATCH**")
        lines.append(f"| {c.k} | {c.seed} | `{c.control}` | {pair(c.steps)} | {pair(c.tokens)} | "
                     f"{pair(c.share)} | {verdict} |")
    return lines + [""]


# -----------------------------------------------------------------------------
# the conclusion: sentences built from the decomposition's numbers

def larger_part(p):
    """'mixing' or 'data scarcity' where the interval of mixing - scarcity excludes 0, else None."""
    d = p.mixing_minus_scarcity
    if d is None or not d.separated_from_zero:
        return None
    return "mixing" if d.value > 0 else "data scarcity"


def split_clause(p):
    values = f"mixing {fmt(p.mixing, 4)}, data scarcity {fmt(p.scarcity, 4)}"
    d, larger = p.mixing_minus_scarcity, larger_part(p)
    if larger is None:
        why = "no interval for their difference" if d.covers == "n/a" else \
            f"mixing - scarcity {fmt(d, 4)} includes 0"
        return f"the intervals do not separate the two parts ({values}; {why})"
    return f"{larger} is the larger part ({values}; mixing - scarcity {fmt(d, 4)})"


def k_sentence(parts):
    """One K's line: the total and which part is larger, on mean XE, then early and late."""
    mean = parts[0]
    total = f"total excess over K=1 {fmt(mean.total, 4)}"
    if mean.total.covers != "n/a" and not mean.total.separated_from_zero:
        total += ", its interval includes 0"
    if mean.scarcity is None:
        return (f"K={mean.k}, {METRIC_LABELS[mean.metric]}: {total}; no control run, so it is not split ("
                + ", ".join(f"{METRIC_LABELS[p.metric]}: {fmt(p.total, 4)}" for p in parts[1:]) + ").")
    return f"K={mean.k}, {METRIC_LABELS[mean.metric]}: {total}; {split_clause(mean)}. " + " ".join(
        f"{METRIC_LABELS[p.metric].capitalize()}: {split_clause(p)}." for p in parts[1:])


def learner_sentence(d, i):
    """On synthetic data: how far the model is from the learner, and the learner's own costs."""
    text = (f"K={i.k}, mean over t: the model's distance to the learner (model - learner) is "
            f"{fmt(i.inefficiency, 4)}; the learner pays {fmt(i.scarcity, 4)} for data scarcity (learner1 - "
            f"oracle)")
    if i.k == 1:
        return text + "."
    area, bound = d.bayes_area[i.k], math.log(i.k)
    return (text + f" and {fmt(i.identification, 4)} for identification (learner - learner1); the Bayes "
            f"identification area is {fmt(area)} nats, {'within' if area.value <= bound else 'above'} "
            f"ln K = {bound:.3f}.")


def conclusion(s):
    d = s.analysis.decomposition
    lines = ["## Conclusion", ""]
    if d is None or not d.parts:
        return lines + ["No decomposition: it needs K = 1 and K >= 2 runs sharing a component.", ""]
    lines += [f"*Generated from the numbers of the decomposition section below, on `{d.first}`; 95% "
              "intervals in brackets, nats.*", ""]
    if not d.control_ks:
        lines += ["No control runs in this experiment: the K effect is not split into data scarcity and "
                  "mixing (`bash sweep.sh` trains them unless CONTROLS=0).", ""]
    ks = list(dict.fromkeys(p.k for p in d.parts))
    lines += [f"- {k_sentence([p for p in d.parts if p.k == k])}" for k in ks]
    if d.ideal:
        lines += [""] + [f"- {learner_sentence(d, i)}" for i in d.ideal if i.metric == "xe_mean"]
    return lines + [""]


# -----------------------------------------------------------------------------
# the figures' sections: caption (written once), then the numbers

def xe_vs_k_caption(s):
    references = (", dashed the Bayes-optimal predictor of each run's training mixture, dotted the oracle "
                  "that knows the component")
    return ("Mean XE over positions t = 1..100 against K, per evaluation view; dots are single seeds, error "
            "bars 95% intervals" + (references if s.analysis.synthetic else "") + ".")


def xe_vs_k_body(s):
    """Per view: XE per K with intervals, the trend test and the ln K fit; then the paired contrasts."""
    a, synthetic, lines = s.analysis, s.analysis.synthetic, []
    extra = " Bayes mean | oracle mean |" if synthetic else ""
    c_metrics = list(POSITION_RANGES)
    for view in a.views.values():
        lines += [f"**{VIEWS[view.name]}**" + (f" `{a.first}`" if view.name == "first" else ""), "",
                  "| K | seeds | windows (docs) | categories | " +
                  " | ".join(f"XE {METRIC_LABELS[m]}" for m in c_metrics) + " |" + extra,
                  "|---" * (4 + len(c_metrics) + 2 * synthetic) + "|"]
        for k, c in view.cells.items():
            lines.append(f"| {k} | {c.n_seeds} | {c.n_windows} ({c.n_docs}) | {', '.join(c.categories)} | "
                         + " | ".join(fmt(c.xe[m]) for m in c_metrics) + " |" +
                         (f" {fmt(c.bayes_mean)} | {fmt(c.oracle_mean)} |" if synthetic else ""))
        notes = scope_notes([c.xe_mean for c in view.cells.values()] + [view.lnk_fit])
        lines += [""] + notes if notes else []
        t = view.trend
        if t:
            slope = fmt(Interval(t["slope"], t["slope_ci"], "runs"), 4)
            lines += ["", f"Trend (regression of run-level XE on K, {t['n_runs']} runs): slope {slope} nats "
                      f"per component, p = {fmt_p(t['p_value'])} (interval and p over the runs' scatter, "
                      "the evaluation documents held fixed; the ln K fit's intervals carry both); "
                      "Spearman rho = "
                      f"{number(t['spearman_rho'], 2)}, p = {fmt_p(t['spearman_p'])}."
                      f"{single_seed_note(t, len(view.cells))} "
                      f"Fit XE = a + b ln K: {fmt_fit(view.lnk_fit)}."]
        else:
            lines += ["", "No trend test or ln K fit: they need at least 3 runs over at least 2 values of K."]
        lines.append("")
    return lines + contrasts_table(a)


def contrasts_table(a):
    if not a.contrasts:
        return []
    c0 = a.contrasts[0]
    lines = [f"**Paired contrasts against K={c0.reference_k}** on `{a.first}` ({c0.n_windows} shared windows "
             f"from {c0.n_docs} documents; two-sided t-test p on the same t reference as the interval; "
             f"Holm-adjusted across the K contrasts of each metric):", "",
             "| K | metric | difference (nats) | p | p (Holm) | seeds (K / ref) |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {c.k} | {c.metric} | {fmt(c.difference, 4)} | {fmt_p(c.p_value)} | {fmt_p(c.p_holm)} | "
              f"{c.n_seeds} / {c.n_seeds_reference} |" for c in a.contrasts]
    notes = scope_notes([c.difference for c in a.contrasts])
    if any(c.holm_single_seed for c in a.contrasts):
        notes.append("The p-values of marked rows rest on a single seed (or document), so they test less "
                     "than the others; the Holm-adjusted p-values of their metric lean on them too.")
    return lines + ([""] + notes if notes else [])


def positions_caption(s):
    a = s.analysis
    return (f"XE(t) on `{a.first}` per K (log position axis; bands: 95% CI over seeds and documents)" +
            ("; dashed: Bayes-optimal predictor of each K's mixture; dash-dot: the learner (knows the model "
             "class and only the run's own training tokens; references.py); dotted: oracle" if a.synthetic
             else "") + f". Right: paired excess XE_K(t) - XE_{a.reference_k}(t)" +
            (", with the Bayes (dashed) and learner (dash-dot) excess." if a.synthetic else "."))


def positions_body(s):
    fits = [f"- K={k}: {fmt_position_fit(c.position_fit)}" for k, c in s.analysis.curves.items()]
    return [f"Fitted to the mean curve, weighted by each position's standard error: "
            f"{law_explanation(position_law)} c is constrained to [{POSITION_C_BOUNDS[0]:g}, "
            f"{POSITION_C_BOUNDS[1]:g}] (its interval clipped to that range).", ""] + fits


def decomposition_caption(s):
    d = s.analysis.decomposition
    learner = ("; bottom: the K-mixture runs' excess over the oracle split by the learner references into "
               "data scarcity (learner1 - oracle), identification (learner - learner1) and model "
               "inefficiency (model - learner).")
    return (f"The K effect on `{d.first}` for mean, early and late XE (95% CIs). Top: the model's total "
            "excess over K=1 split into data scarcity (control of K - K=1) and mixing (K-mixture - its "
            "control)" + (learner if d.ideal else "."))


DECOMPOSITION_METHOD = (
    "Each control of K is the K = 1 model trained on exactly the first component's share of the K-mixture "
    "(the same documents) for the same number of optimizer steps, so XE_mix(K) - XE_1 = [XE_ctrl(K) - XE_1] "
    "(data scarcity, for this model and optimizer) + [XE_mix(K) - XE_ctrl(K)] (mixing: identification plus "
    "interference). Each part is a paired difference on the shared windows with the interval of the "
    "contrasts above (each side's seeds are separate training runs); the point estimates sum exactly. "
    "mixing - scarcity = XE_mix + XE_1 - 2 XE_ctrl, with the same interval, says whether one part is larger.")
LEARNER_METHOD = (
    "The ideal learner, from the K-mixture runs' own arrays (learner1 of a mixture is the learner of its "
    "control by construction; references.py). These parts are against the oracle, not against K = 1: "
    "model - oracle = data scarcity + identification + model inefficiency, exactly.")


def decomposition_body(s):
    d = s.analysis.decomposition
    lines = [DECOMPOSITION_METHOD, ""]
    if not d.control_ks:
        lines += ["No control runs in this experiment: only the total is shown.", ""]
    lines += ["| K | metric | total XE_mix - XE_1 | data scarcity XE_ctrl - XE_1 | mixing XE_mix - XE_ctrl | "
              "mixing - scarcity | seeds (mix / ctrl / K=1) |", "|---|---|---|---|---|---|---|"]
    lines += [f"| {p.k} | {p.metric} | {fmt(p.total, 4)} | {fmt(p.scarcity, 4)} | {fmt(p.mixing, 4)} | "
              f"{fmt(p.mixing_minus_scarcity, 4)} | {' / '.join(map(str, p.n_seeds))} |" for p in d.parts]
    notes = scope_notes([x for p in d.parts for x in (p.total, p.scarcity, p.mixing)])
    lines += [""] + notes if notes else []
    if not d.ideal:
        return lines
    lines += ["", LEARNER_METHOD, "",
              "| K | metric | model - oracle | data scarcity learner1 - oracle | identification learner - "
              "learner1 | model inefficiency model - learner |", "|---|---|---|---|---|---|"]
    lines += [f"| {i.k} | {i.metric} | {fmt(i.excess, 4)} | {fmt(i.scarcity, 4)} | "
              f"{fmt(i.identification, 4)} | {fmt(i.inefficiency, 4)} |" for i in d.ideal]
    if d.learner_alpha:
        lines += ["", "The learner's Dirichlet(alpha) prior, fitted per chain to each run's own transition "
                  "counts by maximum marginal likelihood (lowest to highest over the runs): "
                  + "; ".join(f"{c} {lo:.3g}" + (f"-{hi:.3g}" if hi > lo else "")
                              for c, (lo, hi) in d.learner_alpha.items()) + "."]
    areas = [f"K={k}: {fmt(x)} (ln K = {math.log(k):.3f})" for k, x in d.bayes_area.items() if k > 1]
    return lines + ["", "Bayes identification area sum_t [bayes(t) - oracle(t)] (at most ln K): "
                    + "; ".join(areas) + "."] if areas else lines


def area_caption(s):
    excess = f"XE_K(t) - XE_{s.analysis.reference_k}(t) on `{s.analysis.first}`"
    return (f"A_K = sum over t = 1..100 of the paired excess {excess} against ln K; dashed: the "
            "identification bound y = ln K. Triangles: A_K minus 100 x the late-position excess, the part "
            "of the area that sits at early positions (identification).")


def area_body(s):
    synthetic = s.analysis.synthetic
    rows = [f"| {k} | {x.bound:.3f} | {fmt(x.model)} | {fmt(x.identification)} |" +
            (f" {fmt(x.bayes)} |" if synthetic else "") for k, x in s.analysis.areas.items()]
    return ["| K | ln K | A_K model | model above late level |" + (" A_K Bayes |" if synthetic else ""),
            "|---" * (4 + synthetic) + "|"] + rows


def late_caption(s):
    a = s.analysis
    return (f"XE {range_label('xe_late')} on `{a.first}` against K with the fitted XE_late(K) = E + B K^beta "
            f"(least squares over run-level points). {law_explanation(power_law)} Right: the paired late "
            f"excess over K={a.reference_k}, which the fit predicts as c (K^beta - 1) / beta.")


def size_body(s):
    return [f"- {r.size} ({r.n_params:,} params), K={r.k}: {fmt(r.xe_mean)} ({r.n_seeds} seeds, "
            f"{r.n_windows} windows)" for r in s.sizes]


def dataset_caption(s):
    d = s.dataset_stats
    return (f"Tokens per category and split (log scale). Default order (K = 1..5): "
            f"{', '.join(d.get('default_order', []))}; default budget {d.get('default_budget', 0):,} tokens.")


def dataset_note(s):
    return ("Dataset composition: stats.json not found under the runs' data_dir." +
            ("" if s.order_known else " Without it the default order is unknown: the 'top five' view is the "
             "components the runs used, up to five."))


@dataclass
class Section:
    key: str                # plot.py's figure key
    title: str
    caption: object         # study -> text
    body: object = lambda s: []
    missing: object = None  # study -> why the figure is not there (None: nothing to say)


SECTIONS = [
    Section("xe_vs_k", "XE against K", xe_vs_k_caption, xe_vs_k_body),
    Section("xe_position", "XE against position", positions_caption, positions_body,
            lambda s: "XE against position: it needs a component in every mixture."),
    Section("decomposition", "Decomposition: data scarcity and mixing", decomposition_caption,
            decomposition_body,
            lambda s: "Decomposition: it needs K = 1 and K >= 2 runs with a component in every mixture."),
    Section("excess_area", "Excess area against ln K", area_caption, area_body,
            lambda s: "Excess area and late-position law: they need a component in every mixture and at "
                      "least two values of K."),
    Section("late_power_law", "Late-position XE against K", late_caption,
            lambda s: [power_law_line(s.analysis.power_law)]),
    Section("model_size", "XE against model size",
            lambda s: f"Mean XE on `{s.analysis.first}` against parameter count, one line per K (95% CIs).",
            size_body, lambda s: "XE against model size: only one model size ran (among the experiments that "
                                 "differ from the main one only in n_layer, n_head, n_embd)."),
    Section("dataset", "Dataset composition", dataset_caption, missing=dataset_note),
    Section("training", "Training curves",
            lambda s: "Training loss (left) and validation loss on the mixture's val split (right) against "
                      "training tokens, one line per run of the main experiment, coloured by K."),
]


def document(s, images):
    """REPORT.md: introduction, conclusion, experiments, checks, a section per figure, what is left out."""
    lines = intro(s) + conclusion(s) + experiments_section(s) + budget_section(s)
    skipped = [section.missing(s) for section in SECTIONS if section.key not in images and section.missing]
    drawn = [section for section in SECTIONS if section.key in images]
    for n, section in enumerate(drawn, 1):
        lines += [f"## {section.title}", "", f"![{section.title}]({images[section.key]})", "",
                  f"*Figure {n}. {section.caption(s)}*", "", *section.body(s), ""]
    if skipped:
        lines += ["## Skipped", ""] + [f"- {note}" for note in skipped] + [""]
    lines += ["## Runs not evaluated or left out", ""]
    lines += [f"- `{n}`: {why}" for n, why in s.skipped.items()] or ["- none"]
    lines += ["", "Files: [results.csv](results.csv) (one row per run and evaluation category, every "
              "experiment), [fits.json](fits.json) (every fit, interval and test of the main experiment).",
              ""]
    return "\n".join(lines)
