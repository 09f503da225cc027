"""
REPORT.md's text: tables, captions and methods notes, each written once here, and a conclusion
generated from the numbers (every sentence of it is built from computed values). analysis.py
computes what is written, plot.py draws the figures and calls `document`.
"""
import math
from dataclasses import dataclass

from harness.analysis import VIEWS, Interval
from harness import claims
from harness.claims import conclusion_lines, established, size_parts_sentence, size_xe_sentence
from harness.decomposition import PART_LABELS, PARTS
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
          "defaults, earlier code": "the experiment the current defaults made with earlier code (the "
                                    "current code has no runs of it yet; among earlier versions, the one "
                                    "with the most runs)",
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
    """A fitted parameter as an Interval: the same fields as every interval of stats.py."""
    return Interval.of({"covers": fit.get("covers"), **fit["params"][name]})


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
    if p["d"]["ci"][0] <= 0 <= p["d"]["ci"][1]:
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
             f"| experiment | runs per K | other arms per K | differs from `{s.main.id[:8]}` in | first "
             "component XE mean per K |", "|---|---|---|---|---|"]
    for other in s.experiments:
        x = other.experiment
        diff = "(main)" if x is s.main else "; ".join(
            f"{d.key} = {d.other!r} (main: {d.main!r})" for d in other.differences) or "nothing"
        if other.budget is not None and not other.budget.ok:
            diff += " **(budget check failed)**"
        xe = ", ".join(f"K={k}: {number(c.xe_mean.value)}" for k, c in other.first_cells.items()) or "n/a"
        lines.append(f"| `{x.id[:12]}` | {runs_per_k(x.runs)} | {runs_per_k(x.twins)} | {diff} | {xe} |")
    unknown = [other.experiment.id[:12] for other in s.experiments
               if (other.experiment.runs or other.experiment.twins)[0].code is None]
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
    lines += ["", "The other arms are their own families: each mirrors the K-mixture run of its K and seed, on "
              "exactly that mixture's tokens of the first component (a tagged mixture: all of its tokens), in "
              "the mixture's steps (the steps-matched control, up to one per epoch of rounding; the tagged "
              "mixture, exactly) or 1/K of them (the exposure-matched control, up to one per epoch).", "",
              "| K | seed | arm | run | steps (run / mixture) | expected | tokens trained (run / mixture) | "
              "check |", "|---|---|---|---|---|---|---|---|"]
    for c in s.controls:
        pair = lambda x: " / ".join("?" if v is None else f"{v:,}" for v in x)    # noqa: E731
        verdict = "ok" if c.ok else ("**no mixture run**" if c.mixture is None else "**MISMATCH**")
        expected = "?" if c.expected_steps is None else f"{c.expected_steps:,.1f} ± {c.tolerance}"
        lines.append(f"| {c.k} | {c.seed} | {c.arm} | `{c.run}` | {pair(c.steps)} | {expected} | "
                     f"{pair(c.tokens)} | {verdict} |")
    return lines + [""]


# -----------------------------------------------------------------------------
# the conclusion: claims.py decides what the numbers establish

def conclusion(s):
    d = s.analysis.decomposition
    lines = ["## Conclusion", ""]
    if d is None or not d.parts:
        return lines + ["No decomposition: it needs K = 1 and K >= 2 runs sharing a component."] + \
            research_question_lines(s) + [""]
    lines += [f"*The K effect on `{d.first}` (the component in every mixture), split cause by cause (section "
              "Decomposition below); generated from its numbers, and only what its Holm-adjusted intervals "
              "establish.*", ""]
    if not any(d.arms.values()):
        lines += ["Only the K-mixtures ran (CONTROLS=0): the K effect is not split.", ""]
    table, claims = conclusion_lines(d, fmt)
    lines += table
    if d.learner:
        lines += ["", "The ideal learner beside them (pointwise 95% intervals, outside the family: a "
                  "description, not a claim):", ""]
        lines += [f"- {learner_sentence(d, i)}" for i in d.learner if i.metric == "xe_mean"]
    lines += research_question_lines(s)
    return lines + [""]


def research_question_lines(s):
    """Questions 2 and 3 in a line each, as their sections conclude them (Holm within each)."""
    lines = []
    parts, xe = size_families(s, "part_contrasts"), size_families(s, "contrasts")
    for (larger, smaller), family in xe.items():        # each pair by its parts, else by XE (no arms)
        said = size_parts_sentence(parts[larger, smaller]) if (larger, smaller) in parts else \
            size_xe_sentence(family)
        lines.append(f"- Model size (research question 2), {larger} against {smaller}: {said}")
    if s.unseen is not None and s.unseen.rows:
        lines.append(f"- Unseen components (research question 3): {unseen_sentence(s.unseen)}")
    return [""] + lines if lines else []


def size_families(s, kind="part_contrasts"):
    """{(larger, smaller): that pair of sizes' contrasts of this kind (Sizes.contrasts: of XE)}."""
    pairs = {}
    for c in getattr(s.sizes, kind) if s.sizes is not None else []:
        pairs.setdefault((c.larger, c.smaller), []).append(c)
    return pairs


def learner_sentence(d, i):
    """On synthetic data: the network's identification against the ideal learner's."""
    text = (f"K={i.k}: the ideal learner pays {fmt(i.scarcity, 4)} for data scarcity (learner1(K) - learner1(1)) "
            f"and {fmt(i.identification, 4)} for identification (learner - learner1)")
    if i.network is not None:
        text += f"; the network's identification (mixture - tagged) is {fmt(i.network, 4)}"
        if not math.isnan(i.ratio):
            text += f", {i.ratio:.1f} times the ideal"
    area, bound = d.bayes_area.get(i.k), math.log(i.k)
    if area is not None:
        where = ("within" if area.ci[1] <= bound else "above" if area.ci[0] > bound else
                 "not separated from") if area.covers != "n/a" else "to be compared with"
        text += (f". The Bayes identification area is {fmt(area)} nats, {where} ln K = {bound:.3f} "
                 "(a bound in expectation)")
    return text + "."


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
    tagged = ("; bottom: the tagged mixture's XE(t) (the network told the component) beside learner1's "
              "(the ideal learner told the chain)" if d.tagged_t else "")
    return (f"The K effect on `{d.first}` for each range of positions (pointwise 95% CIs): the total excess "
            f"over K = 1 and its four parts per K (data scarcity, compute dilution, capacity sharing, "
            f"identification)" + tagged + ".")


DECOMPOSITION_METHOD = (
    "Beside each K-mixture (and seed) three runs on the first component split the K effect: the "
    "steps-matched control C_S (K = 1 on the mixture's exact share of the component, the mixture's "
    "optimizer steps), the exposure-matched control C_E (the same share, the mixture's passes per token: "
    "1/K of its steps) and the tagged mixture T (the mixture's data and steps, the model told each window's "
    "component by a learned vector per component added at every position; scored with the true "
    "component). XE_M(K) - XE_1 = scarcity (C_S - XE_1) + dilution (C_E - C_S) + sharing (T - C_E; below 0 "
    "means transfer) + identification (M - T). Each part is the paired difference of its two arms on the "
    "shared windows with the crossed interval; every arm enters over the seeds that have all of them, so "
    "the parts sum to the total exactly. These intervals are pointwise (each at 95%); the conclusion's are "
    "Holm-adjusted.")


def decomposition_body(s):
    d = s.analysis.decomposition
    lines = [DECOMPOSITION_METHOD, ""]
    names = list(PARTS)
    lines += ["| K | range | total M - K=1 | " + " | ".join(f"{PART_LABELS[n]}" for n in names) + " | seeds |",
              "|---" * (4 + len(names)) + "|"]
    for p in d.parts:
        cells = " | ".join(fmt(p.parts[n], 4) if n in p.parts else "—" for n in names)
        lines.append(f"| {p.k} | {METRIC_LABELS[p.metric]} | {fmt(p.total, 4)} | {cells} | {len(p.seeds)} |")
    notes = scope_notes([x for p in d.parts for x in [p.total, *p.parts.values()]])
    lines += [""] + notes if notes else []
    left = sorted({f"K={p.k} {arm}: seed {', '.join(map(str, seeds))}" for p in d.parts
                   for arm, seeds in p.left_out.items()})
    if left:
        lines += ["", "Left out of every part (a seed without every arm of its K): " + "; ".join(left) + "."]
    if d.learner:
        lines += ["", "The ideal learner from the same baseline (synthetic data; no dilution or sharing: it has "
                  "neither steps nor a network): scarcity learner1(K) - learner1(1), identification learner(K) - "
                  "learner1(K); the network's identification (M - T) beside it, and their ratio where both "
                  "intervals exclude 0 on the same side.", "",
                  "| K | range | learner scarcity | learner identification | network identification | ratio |",
                  "|---|---|---|---|---|---|"]
        for i in d.learner:
            ratio = "—" if math.isnan(i.ratio) else f"{i.ratio:.2f}"
            lines.append(f"| {i.k} | {METRIC_LABELS[i.metric]} | {fmt(i.scarcity, 4)} | "
                         f"{fmt(i.identification, 4)} | {fmt(i.network, 4) if i.network else '—'} | {ratio} |")
    if d.learner_alpha:
        lines += ["", "The learner's Dirichlet(alpha) prior, fitted per chain to each run's own transition "
                  "counts by maximum marginal likelihood (lowest to highest over the runs): "
                  + "; ".join(f"{c} {lo:.3g}" + (f"-{hi:.3g}" if hi > lo else "")
                              for c, (lo, hi) in d.learner_alpha.items()) + "."]
    areas = [f"K={k}: {fmt(x)} (ln K = {math.log(k):.3f})" for k, x in d.bayes_area.items() if k > 1]
    return lines + ["", "Bayes identification area sum_t [bayes(t) - oracle(t)] (at most ln K in expectation): "
                    + "; ".join(areas) + "."] if areas else lines


def area_caption(s):
    excess = f"XE_K(t) - XE_{s.analysis.reference_k}(t) on `{s.analysis.first}`"
    return (f"A_K = sum over t = 1..100 of the paired excess {excess} against ln K; dashed: the "
            "identification bound y = ln K. Triangles: A_K minus 100 x the late-position excess, the part "
            "of the area that sits at early positions (not the identification part: the decomposition "
            "measures that, and it is paid late in the window too).")


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


def size_caption(s):
    return (f"Research question 2 on `{s.analysis.first}`: XE against K per model size (left) and the "
            "identification part, mixture - tagged mixture (right), with 95% CIs; the experiments of this "
            "family differ from the main one only in n_layer, n_head, n_embd.")


def size_body(s):
    """Per size: XE, the four parts and the distance to the learner per K; the ln K slope; then the
    paired contrasts between sizes at each K (Holm over K per pair)."""
    names = list(PARTS)
    lines = ["| size | params | K | seeds | XE | " + " | ".join(PART_LABELS[n] for n in names) +
             " | model - learner |", "|---" * (6 + len(names)) + "|"]
    for r in s.sizes.results:
        for k, cell in r.cells.items():
            parts = r.parts.get(k)
            cells = " | ".join(fmt(parts.parts[n], 4) if parts and n in parts.parts else "—" for n in names)
            gap = fmt(r.learner_gap[k], 4) if k in r.learner_gap else "—"
            lines.append(f"| {r.size} | {r.n_params:,} | {k} | {cell.n_seeds} | {fmt(cell.xe_mean)} | {cells} "
                         f"| {gap} |")
    fits = [f"{r.size}: slope b = {fmt(fit_interval(r.lnk_fit, 'b'), 4)} per ln K" for r in s.sizes.results
            if r.lnk_fit]
    if fits:
        lines += ["", "XE = a + b ln K fitted per size (run-level points): " + "; ".join(fits) + "."]
    if s.sizes.contrasts:
        lines += ["", "| K | larger - smaller size | difference | Holm p |", "|---|---|---|---|"]
        lines += [f"| {c.k} | {c.larger} - {c.smaller} | {fmt(c.difference, 4)} | {fmt_p(c.p_holm)} |"
                  for c in s.sizes.contrasts]
    if s.sizes.part_contrasts:
        lines += size_parts_lines(s)
    notes = scope_notes([c.xe_mean for r in s.sizes.results for c in r.cells.values()])
    return lines + ([""] + notes if notes else [])


def size_parts_lines(s):
    """Which parts of the K effect shrink with size: the contrasts' table, and per pair of sizes
    a sentence of what Holm over its K values and parts establishes, never more."""
    contrasts = s.sizes.part_contrasts
    names = [n for n in PARTS if any(c.part == n for c in contrasts)]
    lines = ["", "Which parts change with size: part(larger) - part(smaller) on mean XE, paired on the windows "
             "(< 0: the part is lower, signed, for the larger model); pointwise 95% intervals, Holm p over the "
             "pair's K values and parts with intervals over seeds and documents; ** established.", "",
             "| K | larger - smaller size | " + " | ".join(PART_LABELS[n] for n in names) + " |",
             "|---" * (2 + len(names)) + "|"]
    rows = {}
    for c in contrasts:
        rows.setdefault((c.larger, c.smaller, c.k), {})[c.part] = c
    for (larger, smaller, k), row in rows.items():
        cells = [f"{fmt(row[n].difference, 4)} ({fmt_p(row[n].p_holm)}){' **' if established(row[n]) else ''}"
                 if n in row else "—" for n in names]
        lines.append(f"| {k} | {larger} - {smaller} | " + " | ".join(cells) + " |")
    for (larger, smaller), family in size_families(s).items():
        lines += ["", f"- {larger} against {smaller}: " + size_parts_sentence(family)]
    return lines


def unseen_caption(s):
    u = s.unseen
    return (f"Mean XE on the components no run of this experiment trained on ({', '.join(u.categories)}; the "
            f"same windows at every K) against K, with 95% CIs" +
            (": the network against the in-context learner, which knows the model class (first-order chains "
             "under a Dirichlet prior fitted once per dataset) but only the window's own transitions, the "
             "ideal of learning a new chain in context; dotted, the uniform predictor (ln V)."
             if u.uniform is not None else "."))


def unseen_body(s):
    u = s.unseen
    lines = ["| K | seeds | model | in-context learner | model - learner | change since K = "
             f"{u.rows[0].k} (Holm p) |", "|---|---|---|---|---|---|"]
    for r in u.rows:
        change = f"{fmt(r.change, 4)} ({fmt_p(r.p_holm)})" if r.change is not None else "(reference)"
        lines.append(f"| {r.k} | {r.n_seeds} | {fmt(r.model)} | {fmt(r.context) if r.context else 'n/a'} | "
                     f"{fmt(r.gap, 4) if r.gap else 'n/a'} | {change} |")
    notes = scope_notes([r.model for r in u.rows] + [r.change for r in u.rows if r.change is not None])
    lines += [""] + notes if notes else []
    return lines + ["", unseen_sentence(u)]


def unseen_sentence(u):
    """Whether more training components bring the model closer on unseen ones: only what the
    Holm-adjusted contrasts show, never more."""
    changed = [r for r in u.rows if r.change is not None]
    if not changed:
        return "One K only: no contrast across K."
    last = changed[-1]
    settled = last.p_holm < claims.ALPHA and last.change.covers == claims.FULL
    if not settled:
        return (f"Whether more training components help on unseen ones is not established: the change from "
                f"K = {u.rows[0].k} to K = {last.k} is {fmt(last.change, 4)} (Holm p {fmt_p(last.p_holm)}"
                + ("" if last.change.covers == claims.FULL else "; no interval" if last.change.covers == "n/a"
                   else f"; its interval is over {last.change.covers}") + ").")
    direction = "lowers" if last.change.value < 0 else "raises"
    uniform = f" (the uniform predictor: ln V = {u.uniform:.3f})" if u.uniform is not None else ""
    gap = ""
    if last.gap:        # "above" only where the whole interval over seeds and documents is
        above = last.gap.covers == claims.FULL and last.gap.ci[0] > 0
        gap = (f"; the model stays {fmt(last.gap, 4)} above the in-context learner{uniform}" if above else
               f"; its gap to the in-context learner is {fmt(last.gap, 4)}{uniform}")
    return (f"Training on K = {last.k} components instead of {u.rows[0].k} {direction} XE on the unseen "
            f"ones by {abs(last.change.value):.4f} nats (Holm p {fmt_p(last.p_holm)}){gap}.")


def dataset_caption(s):
    d = s.dataset_stats
    return (f"Tokens per category and split (log scale). Default order (K = 1, 2, ... takes its first K): "
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
    Section("decomposition", "Decomposition: scarcity, dilution, sharing, identification", decomposition_caption,
            decomposition_body,
            lambda s: "Decomposition: it needs K = 1 and K >= 2 runs with a component in every mixture."),
    Section("excess_area", "Excess area against ln K", area_caption, area_body,
            lambda s: "Excess area and late-position law: they need a component in every mixture and at "
                      "least two values of K."),
    Section("late_power_law", "Late-position XE against K", late_caption,
            lambda s: [power_law_line(s.analysis.power_law)]),
    Section("unseen", "Unseen components (research question 3)", unseen_caption, unseen_body,
            lambda s: f"Unseen components: {s.unseen.reason}." if s.unseen is not None and s.unseen.reason
            and not s.unseen.rows else None),
    Section("model_size", "Model size (research question 2)", size_caption, size_body,
            lambda s: "Model size: only one model size ran (among the experiments that differ from the main one "
                      "only in n_layer, n_head, n_embd); `SIZES=... bash sweep.sh` runs several."),
    Section("dataset", "Dataset composition", dataset_caption, missing=dataset_note),
    Section("training", "Training curves",
            lambda s: "Training loss (left) and validation loss on the mixture's val split (right) against "
                      "training tokens, one line per run of the main experiment, coloured by K."),
]


def document(s, images):
    """REPORT.md: introduction, conclusion, experiments, checks, a section per figure, what is left out."""
    lines = intro(s) + conclusion(s) + experiments_section(s) + budget_section(s)
    skipped = [section.missing(s) for section in SECTIONS if section.key not in images and section.missing]
    skipped = [note for note in skipped if note]
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
