"""
What plot.py draws and report.py writes, computed without drawing: one experiment's runs
(experiments.py loads and groups them) make a cell per K on each evaluation view. stats.py gives
every interval and test, laws.py every fitted law (their docstrings say how); this module picks
the data for them and returns the results as small dataclasses.
"""
import math
from dataclasses import dataclass, field

import numpy as np

from configurator import UserError
from harness.data import BLOCK, POSITION_RANGES, positions
from harness.experiments import REFERENCES, BudgetCheck, Experiment, budget_check, differences
from harness.laws import (curve_replicates, fit_linear_in_log_k, fit_position_curve, fit_power_law,
                          run_level_replicates)
from harness.stats import (DocumentMeans, crossed_mean, difference_interval, document_means, holm,
                           interval_component, mean_interval, trend_test)

METRICS = tuple(POSITION_RANGES)     # every table, figure and sentence iterates these
LATE = METRICS.index("xe_late")       # the late range: the late-position law and the areas
VIEWS = {"first": "first component", "own": "own components (mean)",
         "top5": "top five (mean)", "unseen": "unseen categories (mean)"}


# -----------------------------------------------------------------------------
# results

@dataclass
class Interval:
    """An estimate with its 95% interval and what the interval covers (stats.interval_scope).
    stats.py returns the same fields as a plain dict, vectorised over the statistics (position
    ranges) and JSON as it is; Interval.of(result, i) is the one way from one to the other."""
    value: object                   # a number, or a list over positions
    ci: list
    covers: str
    se: object = None
    df: object = None

    @classmethod
    def of(cls, result, index=None):
        """From a stats.py interval dict, or entry `index` of one over a vector of statistics."""
        r = result if index is None else interval_component(result, index)
        return cls(r["value"], list(r["ci"]), r["covers"], r.get("se"), r.get("df"))

    @property
    def separated_from_zero(self):
        return self.covers != "n/a" and (self.ci[0] > 0 or self.ci[1] < 0)


@dataclass
class Cell:
    """One K's runs on one view's windows."""
    k: int
    n_seeds: int
    runs: list
    seeds: list
    categories: list
    n_windows: int
    n_docs: int
    covers: str
    run_xe_mean: list               # one value per run (seed), for the dots and the run-level fits
    run_xe_late: list
    xe: dict                        # range of data.POSITION_RANGES -> Interval
    bayes_mean: Interval = None
    bayes_late: Interval = None
    oracle_mean: Interval = None
    oracle_late: Interval = None

    xe_mean = property(lambda self: self.xe["xe_mean"])
    xe_late = property(lambda self: self.xe["xe_late"])


@dataclass
class View:
    name: str
    cells: dict                     # K -> Cell
    trend: dict = None              # stats.trend_test over run-level XE
    lnk_fit: dict = None            # laws.fit_linear_in_log_k


@dataclass
class Curve:
    """XE(t) on the first component at one K, its paired excess over the reference K, references."""
    k: int
    xe_t: Interval
    position_fit: dict
    excess_t: Interval = None
    references: dict = field(default_factory=dict)   # "bayes", "oracle", "learner", "learner1" -> XE(t)


@dataclass
class Area:
    k: int
    bound: float                    # ln K
    model: Interval                 # sum_t paired excess over the reference K
    identification: Interval        # the same above each window's late level
    bayes: Interval = None


@dataclass
class Contrast:
    k: int
    reference_k: int
    metric: str
    difference: Interval
    p_value: float
    n_seeds: int
    n_seeds_reference: int
    n_windows: int
    n_docs: int
    p_holm: float = math.nan
    holm_single_seed: bool = False


@dataclass
class Analysis:
    ks: list
    first: str
    synthetic: bool
    views: dict                     # name -> View
    curves: dict = field(default_factory=dict)        # K -> Curve
    areas: dict = field(default_factory=dict)         # K -> Area
    contrasts: list = field(default_factory=list)
    power_law: dict = None
    decomposition: object = None    # decomposition.Decomposition (plot.py fills it in)

    @property
    def reference_k(self):
        return self.ks[0]

    @property
    def several_k(self):
        return self.first is not None and len(self.ks) > 1


@dataclass
class ExperimentSummary:
    """An experiment beside the main one: how it differs, its budget check, its first-component XE."""
    experiment: Experiment
    differences: list
    budget: BudgetCheck = None
    first_cells: dict = field(default_factory=dict)      # K -> Cell


@dataclass
class Study:
    """Everything REPORT.md says: the runs, the main experiment's analysis and checks, the others."""
    out: str
    runs: list
    skipped: dict
    main: Experiment
    choice: str                     # which rule chose it: report.CHOICE
    analysis: Analysis
    experiments: list               # ExperimentSummary, the main one first
    budget: BudgetCheck
    controls: list                  # ControlCheck
    sizes: object = None            # sizes.Sizes: research question 2, when several sizes ran
    dataset_stats: dict = None
    order_known: bool = False
    n_boot: int = 0
    unseen: object = None           # generalisation.Unseen: research question 3


# -----------------------------------------------------------------------------
# cells: one K's runs on a view's windows

def stack_view(cell, categories, kind="model"):
    """
    (S, N, T) losses of a cell's seeds on the view's pooled windows, and a document id per window,
    'category:doc', the same for a document in every cell (the K values share documents).
    """
    if not categories or any(f"{kind}:{c}" not in r.arrays for r in cell for c in categories):
        return None, None
    try:
        values = np.stack([np.concatenate([r.arrays[f"{kind}:{c}"] for c in categories]) for r in cell])
    except ValueError:
        raise UserError(f"runs {', '.join(r.name for r in cell)} were scored on different evaluation "
                        f"windows; re-run `python evaluate.py <run> --force` on them so they share one set")
    docs = [np.char.add(f"{c}:", cell[0].arrays[f"doc:{c}"].astype(np.int64).astype(str)) for c in categories]
    return values, np.concatenate(docs)


def held_out(runs):
    """Components every run was scored on and none trained on, in the runs' evaluation order."""
    scored = [c for c in runs[0].eval["categories"] if all(c in r.eval["categories"] for r in runs)]
    trained = {c for r in runs for c in r.components}
    return [c for c in scored if c not in trained]


def view_categories(view, cell, first, top5, unseen):
    """A view's categories for one K's runs: the first component, the runs' own components, the
    top five, or the components no run of the experiment trained on (the same for every K)."""
    evaluated = [c for c in cell[0].eval["categories"] if all(c in r.eval["categories"] for r in cell)]
    chosen = {"first": [first] if first else [],
              "own": [c for c in cell[0].components if all(c in r.components for r in cell)],
              "top5": list(top5), "unseen": list(unseen)}[view]
    return [c for c in chosen if c in evaluated]


def window_stats(values):
    """Per-window mean over each range of METRICS: (S, N, len(METRICS))."""
    return np.stack([values[..., positions(m)].mean(-1) for m in METRICS], -1)


def area_parts(values):
    """Per-window area sum_t XE(t), and the area above the window's late-position level."""
    area = values.sum(-1)
    return np.stack([area, area - BLOCK * values[..., positions("xe_late")].mean(-1)], -1)


def column(means, index):
    """One window statistic of a cell's DocumentMeans (S, D, len(METRICS)) -> (S, D)."""
    return DocumentMeans(means.means[..., index], means.weights, means.ids)


def summarise_cell(k, cell, categories):
    """XE of one K's runs on a view's windows with intervals; and its DocumentMeans for the fits."""
    values, docs = stack_view(cell, categories)
    if values is None:
        return None, None
    per_window = window_stats(values)
    means = document_means(per_window, docs)
    overall = mean_interval(means)
    summary = Cell(k, len(cell), [r.name for r in cell], [r.seed for r in cell], categories, values.shape[1],
                   len(means.ids), overall["covers"], per_window[..., 0].mean(1).tolist(),
                   per_window[..., LATE].mean(1).tolist(),
                   {m: Interval.of(overall, i) for i, m in enumerate(METRICS)})
    for kind in ("bayes", "oracle"):
        ref, _ = stack_view(cell, categories, kind)
        if ref is not None:
            overall = crossed_mean(window_stats(ref), docs)
            setattr(summary, f"{kind}_mean", Interval.of(overall, 0))
            setattr(summary, f"{kind}_late", Interval.of(overall, LATE))
    return summary, means


# -----------------------------------------------------------------------------
# one experiment: views, then the first component's curves, contrasts, areas, laws, decomposition

def by_k(runs):
    cells = {}
    for r in runs:
        cells.setdefault(r.k, []).append(r)
    return dict(sorted(cells.items()))


def analyse_view(view, cells, first, top5, n_boot, boot_seed):
    """One view's cells, trend test and ln K fit, and the cells' DocumentMeans (for the power law)."""
    unseen = held_out([r for cell in cells.values() for r in cell])
    summaries = {k: summarise_cell(k, cell, view_categories(view, cell, first, top5, unseen))
                 for k, cell in cells.items()}
    found = {k: s for k, (s, _) in summaries.items() if s is not None}
    if not found:
        return None, None
    means = [summaries[k][1] for k in found]
    k_runs = [k for k, s in found.items() for _ in s.run_xe_mean]
    xe_runs = [x for s in found.values() for x in s.run_xe_mean]
    result = View(view, found, trend_test(k_runs, xe_runs))
    if len(found) >= 2:
        replicates = run_level_replicates([column(m, 0) for m in means], xe_runs, n_boot, boot_seed)
        result.lnk_fit = fit_linear_in_log_k(k_runs, xe_runs, replicates)
    return result, means


def analyse(experiment, first, top5, n_boot, boot_seed):
    """Everything the report says about one experiment."""
    cells = by_k(experiment.runs)
    synthetic = all(r.source == "synthetic" for r in experiment.runs)
    a = Analysis(list(cells), first, synthetic, {})
    first_means = None
    for view in VIEWS:
        result, means = analyse_view(view, cells, first, top5, n_boot, boot_seed)
        if result is not None:
            a.views[view] = result
            first_means = means if view == "first" else first_means
    if first is None:
        return a
    docs = stack_view(cells[a.reference_k], [first])[1]
    losses = {kind: {k: stack_view(cell, [first], kind)[0] for k, cell in cells.items()}
              for kind in ("model",) + REFERENCES}
    per_window = {k: document_means(window_stats(v), docs) for k, v in losses["model"].items()}
    a.curves = first_curves(losses, docs, n_boot, boot_seed)
    a.areas = excess_areas(losses, docs)
    a.contrasts = paired_contrasts(per_window, cells, docs)
    first_view = a.views["first"].cells
    if len(first_view) >= 3:
        late_runs = [x for s in first_view.values() for x in s.run_xe_late]
        replicates = run_level_replicates([column(m, 2) for m in first_means], late_runs, n_boot, boot_seed)
        a.power_law = fit_power_law([k for k, s in first_view.items() for _ in s.run_xe_late], late_runs,
                                    replicates)
    return a


def first_curves(losses, docs, n_boot, boot_seed):
    """Per K: XE(t) with its band and position-law fit, the paired excess over the reference K, references."""
    model = {k: document_means(v, docs) for k, v in losses["model"].items()}
    ref = min(model)
    curves = {}
    for k, means in model.items():
        xe_t = mean_interval(means)
        replicates = curve_replicates(means, xe_t["value"], n_boot, boot_seed)
        fit = fit_position_curve(xe_t["value"], xe_t["se"], replicates)
        curves[k] = Curve(k, Interval.of(xe_t), fit)
        if k != ref:
            curves[k].excess_t = Interval.of(difference_interval(means, model[ref]))
        for kind in REFERENCES:
            if losses[kind][k] is not None:
                curves[k].references[kind] = losses[kind][k].mean(axis=(0, 1)).tolist()
    return curves


def excess_areas(losses, docs):
    """Per K above the reference: the area of the paired excess, its part above the late level, Bayes's."""
    areas = {kind: {k: document_means(area_parts(v), docs) for k, v in losses[kind].items() if v is not None}
             for kind in ("model", "bayes")}
    ref = min(losses["model"])
    result = {}
    for k in list(losses["model"])[1:]:
        model = difference_interval(areas["model"][k], areas["model"][ref])
        # Bayes_K - Bayes_ref <= (Bayes_K - oracle) <= ln K
        result[k] = Area(k, math.log(k), Interval.of(model, 0), Interval.of(model, 1))
        if k in areas["bayes"] and ref in areas["bayes"]:
            result[k].bayes = Interval.of(difference_interval(areas["bayes"][k], areas["bayes"][ref]), 0)
    return result


def paired_contrasts(per_window, cells, docs):
    """Every K against the reference K on mean, early and late XE, Holm-adjusted per metric."""
    ks = list(per_window)
    contrasts = []
    for k in ks[1:]:
        difference = difference_interval(per_window[k], per_window[ks[0]])
        contrasts += [Contrast(k, ks[0], metric, Interval.of(difference, i), float(difference["p_value"][i]),
                               len(cells[k]), len(cells[ks[0]]), len(docs), len(per_window[k].ids))
                      for i, metric in enumerate(METRICS)]
    for metric in METRICS:
        family = [c for c in contrasts if c.metric == metric]
        for c, p_adj in zip(family, holm([c.p_value for c in family]) if family else []):
            c.p_holm = float(p_adj)
            # the family's adjusted p-values lean on every member: say when one of them rests on one seed
            c.holm_single_seed = any(f.difference.covers != "seeds and documents" for f in family)
    return contrasts


# -----------------------------------------------------------------------------
# the other experiments

def summarise_experiments(experiments, main, first):
    """The main experiment, then every other one with how it differs and its first-component XE per K."""
    summaries = []
    for x in [main] + [x for x in experiments.values() if x is not main]:
        cells = {}
        if x.runs and first is not None:
            cells = {k: summarise_cell(k, cell, [first])[0] for k, cell in by_k(x.runs).items()}
        summaries.append(ExperimentSummary(x, differences(main, x), budget_check(x.runs) if x.runs else None,
                                           {k: c for k, c in cells.items() if c is not None}))
    return summaries


