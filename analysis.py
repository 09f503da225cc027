"""
What plot.py draws and report.py writes, computed without drawing. Evaluated runs are loaded
into Run records and grouped into experiments (runs that share every setting that changes their
numbers except seed and K: runs.experiment_config); one experiment's runs make a cell per K on
each evaluation view. stats.py gives every interval, test and fitted law (its docstring says
how); this module picks the data for them and returns the results as small dataclasses.
"""
import math
import os
import zipfile
from dataclasses import dataclass, field

import numpy as np

from configurator import UserError
from data import BLOCK, EARLY, LATE
from runs import (DEFAULT_CONFIGS, experiment_config, experiment_identity, read_json, read_log,
                  train_defaults)
from stats import (DocumentMeans, crossed_mean, crossed_variance, difference_interval, document_means,
                   fit_linear_in_log_k, fit_position_curve, fit_power_law, holm, interval_component,
                   mean_interval, curve_replicates, run_level_replicates, t_interval, trend_test)

METRICS = ("xe_mean", "xe_early", "xe_late")
VIEWS = {"first": "first component", "own": "own components (mean)",
         "top5": "top five (mean)", "unseen": "unseen categories (mean)"}
SIZE_KEYS = ("n_layer", "n_head", "n_embd")   # experiments that differ only here: the model-size figure
REFERENCES = ("bayes", "oracle", "learner", "learner1")


# -----------------------------------------------------------------------------
# runs and experiments

@dataclass
class Run:
    """An evaluated run folder: its files as read, and the facts about it that the analysis asks."""
    name: str
    dir: str
    eval: dict                      # eval.json
    arrays: dict                    # eval.npz
    config: dict                    # config.json
    done: dict
    log: list
    known_order: list = None        # the data's default order, for runs whose config.json predates it

    k = property(lambda self: int(self.eval["k"]))              # a control: the K it mirrors
    seed = property(lambda self: self.eval["seed"])
    components = property(lambda self: list(self.eval["components"]))     # what it trained on
    control = property(lambda self: bool(self.eval.get("control")))
    default_order = property(lambda self: self.config.get("dataset", {}).get("default_order")
                             or self.known_order)
    source = property(lambda self: self.eval["source"])
    settings = property(lambda self: self.config.get("config", {}))      # train.py's resolved config

    @property
    def experiment(self):
        """Its experiment's id, by runs.experiment_identity (the one definition) from config.json."""
        return experiment_identity(self.settings, self.config["dataset"]["fingerprint"], self.default_order)


@dataclass
class Experiment:
    """Runs that share every setting that changes their numbers except seed and K (and the data)."""
    id: str
    runs: list = field(default_factory=list)          # the K runs
    controls: list = field(default_factory=list)      # data-matched K = 1 runs of its K-mixtures

    @property
    def settings(self):
        first = (self.runs or self.controls)[0]
        return experiment_config(first.settings, first.default_order)


# -----------------------------------------------------------------------------
# results

@dataclass
class Interval:
    """An estimate with its 95% interval and what the interval covers (stats.interval_scope)."""
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
    xe_mean: Interval
    xe_early: Interval
    xe_late: Interval
    bayes_mean: Interval = None
    bayes_late: Interval = None
    oracle_mean: Interval = None
    oracle_late: Interval = None


@dataclass
class View:
    name: str
    cells: dict                     # K -> Cell
    trend: dict = None              # stats.trend_test over run-level XE
    lnk_fit: dict = None            # stats.fit_linear_in_log_k


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
class Parts:
    """The model's K effect at one K and metric: total = scarcity + mixing (paired differences)."""
    k: int
    metric: str
    total: Interval                 # XE_mix(K) - XE_1
    scarcity: Interval = None       # XE_ctrl(K) - XE_1: less data per component
    mixing: Interval = None         # XE_mix(K) - XE_ctrl(K): identification plus interference
    mixing_minus_scarcity: Interval = None
    n_seeds: tuple = ()             # (mixture, control, K = 1)


@dataclass
class IdealParts:
    """The K-mixture runs against their learner references: excess = scarcity + identification +
    inefficiency (each model or reference minus the next one down, so they sum exactly)."""
    k: int
    metric: str
    excess: Interval                # model - oracle
    scarcity: Interval              # learner1 - oracle
    identification: Interval        # learner - learner1
    inefficiency: Interval          # model - learner


@dataclass
class Decomposition:
    first: str
    parts: list                     # Parts per K >= 2 and metric
    control_ks: list                # K values with controls on the first component
    ideal: list = field(default_factory=list)          # IdealParts per K and metric (synthetic)
    bayes_area: dict = field(default_factory=dict)     # K -> Interval of sum_t [bayes - oracle] (<= ln K)
    learner_alpha: dict = field(default_factory=dict)  # chain -> (lowest, highest) fitted alpha over runs


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
    decomposition: Decomposition = None

    @property
    def reference_k(self):
        return self.ks[0]

    @property
    def several_k(self):
        return self.first is not None and len(self.ks) > 1


@dataclass
class SizeRow:
    size: str
    n_params: int
    k: int
    n_seeds: int
    n_windows: int
    xe_mean: Interval


@dataclass
class BudgetCheck:
    """The runs of one experiment: the tokens they planned and trained on, and their steps."""
    token_budget: int
    n_runs: int
    problems: list
    tokens: int = None

    @property
    def ok(self):
        return not self.problems


@dataclass
class ControlCheck:
    """A control against its mixture run (same K and seed): steps equal up to rounding, same share."""
    k: int
    seed: object
    control: str
    mixture: str = None
    steps: tuple = (None, None)         # (control, mixture)
    tokens: tuple = (None, None)        # trained, (control, mixture)
    share: tuple = (None, None)         # the first component's unique tokens (control, mixture)
    tolerance: int = 0                  # steps may differ by one per epoch of the control

    @property
    def ok(self):
        c, m = self.steps
        return self.mixture is not None and abs(c - m) <= self.tolerance and self.share[0] == self.share[1]


@dataclass
class Difference:
    key: str
    main: object
    other: object


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
    choice: str                     # which rule chose it: "group", "defaults", "largest"
    analysis: Analysis
    experiments: list               # ExperimentSummary, the main one first
    budget: BudgetCheck
    controls: list                  # ControlCheck
    sizes: list = None              # SizeRow, when several sizes ran
    dataset_stats: dict = None
    order_known: bool = False
    n_boot: int = 0


# -----------------------------------------------------------------------------
# loading runs

def read_run(folder):
    """A Run from an evaluated folder, or the reason it is left out."""
    for needed, what in (("eval.json", "no eval.json"), ("eval.npz", "eval.json without eval.npz")):
        if not os.path.exists(os.path.join(folder, needed)):
            return f"not evaluated ({what})"
    try:
        ev = read_json(os.path.join(folder, "eval.json"))
        with np.load(os.path.join(folder, "eval.npz")) as z:
            arrays = {key: z[key] for key in z.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:     # e.g. cut short in a copy
        return f"unreadable evaluation files ({type(e).__name__}: {e}); re-run evaluate.py"
    try:
        config = read_json(os.path.join(folder, "config.json"))
        done = read_json(os.path.join(folder, "done"))
    except (OSError, ValueError) as e:
        return f"config.json or done unreadable ({type(e).__name__}); train it again"
    if "identity" not in ev or ev.get("identity") != config.get("identity"):
        return f"evaluated before this version or for another run; re-run `python evaluate.py {folder}`"
    if ev.get("checkpoint_step") != done.get("steps"):
        return (f"its checkpoint (step {ev.get('checkpoint_step')}) is not the finished run `done` "
                f"describes (step {done.get('steps')}): left out; finish it with train.py")
    log = read_log(os.path.join(folder, "log.jsonl"))
    return Run(os.path.basename(folder), folder, ev, arrays, config, done, log)


def load_runs(out_dir):
    """Evaluated runs (sorted by K, seed, name) and {name: why} for folders that are not."""
    if not os.path.isdir(out_dir):
        return [], {}
    runs, skipped, seen = [], {}, {}
    for name in sorted(os.listdir(out_dir)):
        folder = os.path.join(out_dir, name)
        if not os.path.isdir(folder) or name.startswith("."):
            continue
        run = read_run(folder)
        if isinstance(run, str):
            skipped[name] = run
        elif run.eval["identity"] in seen:   # one training run under two names (a sweep's, a hand-made one)
            skipped[name] = f"the same run (identity) as `{seen[run.eval['identity']]}`: counted once"
        else:
            seen[run.eval["identity"]] = name
            runs.append(run)
    runs.sort(key=lambda r: (r.k, str(r.seed), r.name))
    fill_default_orders(runs, out_dir)
    return runs, skipped


def fill_default_orders(runs, out_dir):
    """A run's experiment needs its data's default order, which config.json records only since
    2026-11-26: for older runs, take it from a newer run on the same data, else from the data's
    meta.json when its fingerprint is the run's."""
    known = {r.config["dataset"]["fingerprint"]: r.default_order for r in runs if r.default_order}
    for r in (r for r in runs if not r.default_order):
        fingerprint = r.config["dataset"]["fingerprint"]
        meta_path = dataset_file(r, "meta.json", out_dir)
        meta = read_json(meta_path) if meta_path else {}
        r.known_order = known.get(fingerprint) or (
            meta.get("default_order") if meta.get("fingerprint") == fingerprint else None)


def drop_other_evalsets(runs, skipped):
    """Every comparison pairs windows across runs: a run scored on another evaluation set is left out."""
    kept = list(runs)
    for dataset in sorted({r.eval["dataset"] for r in runs}):
        shas = [r.eval.get("evalset", {}).get("sha") for r in runs if r.eval["dataset"] == dataset]
        common = max(sorted(set(shas), key=str), key=shas.count)
        for r in runs:
            if r.eval["dataset"] == dataset and r.eval.get("evalset", {}).get("sha") != common:
                skipped[r.name] = (f"evaluated on a different evaluation set than the other {dataset} runs; "
                                   f"re-run `python evaluate.py {r.dir} --force`")
                kept.remove(r)
    return kept


def drop_mixed_cells(runs, skipped):
    """A K cell pools one mixture: runs of one experiment and K that extend the default order
    differently (K beyond its length) keep the mixture most of them trained on; the rest are left out."""
    cells = {}
    for r in runs:
        cells.setdefault((r.experiment, r.control, r.k), []).append(r)
    kept = list(runs)
    for (_, control, k), cell in sorted(cells.items(), key=lambda kv: str(kv[0])):
        mixtures = [tuple(r.components) for r in cell]
        common = max(sorted(set(mixtures)), key=mixtures.count)
        for r in cell:
            if tuple(r.components) != common:
                kept.remove(r)
                skipped[r.name] = (f"trained on {', '.join(r.components)}, while the other K={k}"
                                   f"{' control' if control else ''} runs of its experiment trained on "
                                   f"{', '.join(common)}: a K cell pools one mixture")
    return kept


# -----------------------------------------------------------------------------
# experiments

def group_experiments(runs):
    """{experiment id: Experiment}; controls join their experiment, apart from its K cells."""
    experiments = {}
    for r in runs:
        e = experiments.setdefault(r.experiment, Experiment(r.experiment))
        (e.controls if r.control else e.runs).append(r)
    return experiments


def default_experiment(run):
    """The experiment the current defaults make on this run's data: train.py's defaults with the
    source's default config files (runs.DEFAULT_CONFIGS, what `bash sweep.sh [synthetic]` runs)."""
    config = train_defaults(DEFAULT_CONFIGS.get(run.source, []))
    config["token_budget"] = config["token_budget"] or run.config["dataset"]["default_budget"]
    return experiment_identity(config, run.config["dataset"]["fingerprint"], run.default_order)


def choose_experiment(experiments, wanted):
    """The experiment the report is about: --group=<id prefix>, else the one the current defaults
    make, else the one with the most runs; and which rule chose it. Experiments of controls alone
    do not count."""
    groups = {e: x for e, x in experiments.items() if x.runs}
    if not groups:
        raise UserError("only control runs are evaluated; evaluate the K runs they mirror too")
    if wanted:
        matches = [e for e in groups if e.startswith(wanted)]
        if len(matches) != 1:
            raise UserError(f"--group={wanted} matches {len(matches)} experiments; "
                            f"use a prefix of one of: {', '.join(e[:12] for e in groups)}")
        return groups[matches[0]], "group"
    defaults = [e for e, x in groups.items() if e == default_experiment(x.runs[0])]
    if defaults:
        return groups[defaults[0]], "defaults"
    return groups[max(sorted(groups), key=lambda e: len(groups[e].runs))], "largest"


def differences(main, other):
    """How `other` differs from `main`: every experiment setting with another value, and the data."""
    a, b = main.settings, other.settings
    found = [Difference(k, a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
    data = [(x.runs or x.controls)[0].config["dataset"] for x in (main, other)]
    if data[0].get("fingerprint") != data[1].get("fingerprint"):
        found.append(Difference("data", f"{data[0].get('name')} ({str(data[0].get('fingerprint'))[:8]})",
                                f"{data[1].get('name')} ({str(data[1].get('fingerprint'))[:8]})"))
    return found


# -----------------------------------------------------------------------------
# the dataset's files: its component order names the first component and the top five

def dataset_file(run, filename, out_dir):
    """<config.data_dir>/filename, trying the path as given and relative to out/'s parent."""
    data_dir = run.settings.get("data_dir") or run.config.get("dataset", {}).get("dir")
    if not data_dir:
        return None
    for base in ("", os.path.dirname(os.path.abspath(out_dir))):
        path = os.path.join(base, data_dir, filename)
        if os.path.exists(path):
            return path
    return None


def component_order(runs, out_dir):
    """(the dataset's stats.json or None, its default component order, whether the data gave it:
    config.json records it, older runs had it from the data's files)."""
    stats_path = next(filter(None, (dataset_file(r, "stats.json", out_dir) for r in runs)), None)
    dataset_stats = read_json(stats_path) if stats_path else None
    order = next((r.default_order for r in runs if r.default_order), None)
    if not order:
        meta_path = next(filter(None, (dataset_file(r, "meta.json", out_dir) for r in runs)), None)
        order = (dataset_stats or (read_json(meta_path) if meta_path else {})).get("default_order")
    if order:
        return dataset_stats, order, True
    return dataset_stats, list(dict.fromkeys(c for r in runs for c in r.components)), False


def first_component(runs, order):
    """The first component in the default order that every run trained on and was scored on."""
    shared = set.intersection(*({c for c in r.components if c in r.eval["categories"]} for r in runs))
    return next((c for c in order + runs[0].components if c in shared), None)


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


def view_categories(view, cell, first, top5):
    evaluated = [c for c in cell[0].eval["categories"] if all(c in r.eval["categories"] for r in cell)]
    mixed = {c for r in cell for c in r.components}
    chosen = {"first": [first] if first else [],
              "own": [c for c in cell[0].components if all(c in r.components for r in cell)],
              "top5": list(top5),
              "unseen": [c for c in evaluated if c not in mixed]}[view]
    return [c for c in chosen if c in evaluated]


def window_stats(values):
    """Per-window (mean over t, early mean, late mean): (S, N, 3)."""
    return np.stack([values.mean(-1), values[..., EARLY].mean(-1), values[..., LATE].mean(-1)], -1)


def area_parts(values):
    """Per-window area sum_t XE(t), and the area above the window's late-position level."""
    area = values.sum(-1)
    return np.stack([area, area - BLOCK * values[..., LATE].mean(-1)], -1)


def column(means, index):
    """One window statistic of a cell's DocumentMeans (S, D, 3) -> (S, D)."""
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
                   per_window[..., 2].mean(1).tolist(), *(Interval.of(overall, i) for i in range(3)))
    for kind in ("bayes", "oracle"):
        ref, _ = stack_view(cell, categories, kind)
        if ref is not None:
            overall = crossed_mean(window_stats(ref), docs)
            setattr(summary, f"{kind}_mean", Interval.of(overall, 0))
            setattr(summary, f"{kind}_late", Interval.of(overall, 2))
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
    summaries = {k: summarise_cell(k, cell, view_categories(view, cell, first, top5))
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
    a.decomposition = decompose(first, per_window, losses, by_k(experiment.controls), docs)
    if a.decomposition is not None:
        a.decomposition.learner_alpha = learner_alphas(experiment.runs + experiment.controls)
    return a


def learner_alphas(runs):
    """Each chain's Dirichlet prior fitted to a run's own counts (eval.json), as a range over runs."""
    fitted = {}
    for r in runs:
        for chain, alpha in r.eval.get("learner_alpha", {}).items():
            fitted.setdefault(chain, []).append(alpha)
    return {chain: (min(a), max(a)) for chain, a in sorted(fitted.items())}


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
# decomposition of the K effect on the first component (issue 9)

def mixing_minus_scarcity(mix, ctrl, ref):
    """(mix - ctrl) - (ctrl - ref) = mix + ref - 2 ctrl: is one part larger than the other?"""
    v = crossed_variance([(mix.means, 1.0), (ref.means, 1.0), (2 * ctrl.means, -1.0)], mix.weights)
    return t_interval(v["estimate"], v["variance"], v["df"], v["covers"])


def decompose(first, per_window, losses, controls, docs):
    """
    Per K >= 2 and metric: the total excess over K = 1, its data-scarcity part (the control of K
    against K = 1) and its mixing part (the K-mixture against its control); on synthetic data the
    K-mixture runs against their learner references. Controls count only on the first component.
    """
    if 1 not in per_window:
        return None
    ctrl = {}
    for k, cell in controls.items():
        values = stack_view(cell, [first])[0]
        if values is not None and all(r.components == [first] for r in cell):
            ctrl[k] = document_means(window_stats(values), docs)
    result = Decomposition(first, [], sorted(k for k in ctrl if k in per_window))
    for k in [k for k in per_window if k >= 2]:
        total = difference_interval(per_window[k], per_window[1])
        if k not in ctrl:
            result.parts += [Parts(k, m, Interval.of(total, i), n_seeds=(len(per_window[k].means), 0,
                                                                          len(per_window[1].means)))
                             for i, m in enumerate(METRICS)]
            continue
        scarcity = difference_interval(ctrl[k], per_window[1])
        mixing = difference_interval(per_window[k], ctrl[k])
        versus = mixing_minus_scarcity(per_window[k], ctrl[k], per_window[1])
        seeds = tuple(len(x.means) for x in (per_window[k], ctrl[k], per_window[1]))
        result.parts += [Parts(k, m, Interval.of(total, i), Interval.of(scarcity, i), Interval.of(mixing, i),
                               Interval.of(versus, i), seeds) for i, m in enumerate(METRICS)]
    if all(losses[kind][k] is not None for kind in ("model",) + REFERENCES for k in per_window):
        for k in per_window:
            result.ideal += ideal_parts(k, {kind: losses[kind][k] for kind in ("model",) + REFERENCES}, docs)
            bayes_area = (losses["bayes"][k].astype(np.float64) - losses["oracle"][k]).sum(-1)   # per window
            result.bayes_area[k] = Interval.of(crossed_mean(bayes_area, docs))
    return result


def ideal_parts(k, arrays, docs):
    """The K-mixture runs' excess over the oracle, split by their learner references, per metric."""
    def part(a, b):
        return crossed_mean(window_stats(arrays[a].astype(np.float64) - arrays[b]), docs)
    excess, scarcity = part("model", "oracle"), part("learner1", "oracle")
    identification, inefficiency = part("learner", "learner1"), part("model", "learner")
    return [IdealParts(k, m, *(Interval.of(x, i) for x in (excess, scarcity, identification, inefficiency)))
            for i, m in enumerate(METRICS)]


# -----------------------------------------------------------------------------
# checks and comparisons across experiments

def size_rows(experiments, main, first):
    """First-component XE per (model size, K) over the experiments that differ from `main` only in size."""
    family = [x for x in experiments.values()
              if x.runs and all(d.key in SIZE_KEYS for d in differences(main, x))]
    cells = {}
    for r in (r for x in family for r in x.runs if first in r.components):
        cells.setdefault((r.eval["model_size"], r.eval["n_params"], r.k), []).append(r)
    if len({size for size, _, _ in cells}) < 2:
        return None
    rows = []
    for (size, n_params, k), cell in sorted(cells.items(), key=lambda kv: (kv[0][1], kv[0][2])):
        values, docs = stack_view(cell, [first])
        rows.append(SizeRow(size, n_params, k, len(cell), values.shape[1],
                            Interval.of(crossed_mean(values.mean(-1), docs))))
    return rows


def budget_check(runs):
    """Did every run train on the tokens it planned, the same for all, in equal steps?"""
    problems, trained, steps = [], {}, {}
    for r in runs:
        epochs = r.config.get("schedule", {}).get("epochs") or r.settings.get("epochs") or 0
        planned = sum(r.config.get("mixture", {}).get("tokens", {}).values()) * epochs or None
        trained[r.name], steps[r.name] = r.done["tokens"], r.done["steps"]
        if planned is not None and trained[r.name] != planned:
            problems.append(f"{r.name}: trained on {trained[r.name]:,} tokens but its mixture x epochs "
                            f"is {planned:,}")
    if len(set(trained.values())) > 1:
        problems.append("runs trained on different token counts: " +
                        ", ".join(f"{n}={t:,}" for n, t in trained.items()))
    if len(set(steps.values())) > 1:
        problems.append("runs took different numbers of steps: " +
                        ", ".join(f"{n}={s:,}" for n, s in steps.items()))
    return BudgetCheck(int(runs[0].eval["token_budget"]), len(runs), problems,
                       None if problems else next(iter(trained.values())))


def control_checks(experiment):
    """Each control against the mixture run it mirrors (same K and seed): steps, tokens, share."""
    mixtures = {(r.k, str(r.seed)): r for r in experiment.runs}
    checks = []
    for c in experiment.controls:
        first = c.components[0]
        epochs = int(c.config.get("schedule", {}).get("epochs", 0))
        check = ControlCheck(c.k, c.seed, c.name, tolerance=epochs)
        m = mixtures.get((c.k, str(c.seed)))
        if m is not None:
            check.mixture, check.steps = m.name, (c.done["steps"], m.done["steps"])
            check.tokens = (c.done["tokens"], m.done["tokens"])
            check.share = tuple(x.config.get("mixture", {}).get("tokens", {}).get(first) for x in (c, m))
        checks.append(check)
    return checks


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


def results_rows(runs):
    """results.csv: one row per run and evaluation category, every experiment."""
    rows = []
    for r in runs:
        ev = r.eval
        for cat, c in ev["categories"].items():
            row = {"run": r.name, "experiment": r.experiment, "dataset": ev["dataset"],
                   "source": ev["source"], "K": r.k, "control": r.control,
                   "components": "+".join(r.components), "seed": r.seed, "model_size": ev["model_size"],
                   "n_params": ev["n_params"], "token_budget": ev["token_budget"], "category": cat,
                   "in_mixture": c["in_mixture"], "n_windows": c["n_windows"]}
            for kind in ("",) + REFERENCES:
                block = c.get(kind) if kind else c
                if block:
                    prefix = f"{kind}_" if kind else ""
                    xe_t = np.asarray(block["xe_t"], dtype=float)
                    row.update({f"{prefix}xe_mean": block["xe_mean"],
                                f"{prefix}xe_mean_bits": block["xe_mean_bits"],
                                f"{prefix}xe_early": xe_t[EARLY].mean(),
                                f"{prefix}xe_late": xe_t[LATE].mean()})
            rows.append(row)
    return rows
