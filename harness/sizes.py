"""
Research question 2: does the K effect, and which of its parts, shrink with model size? The
experiments that differ from the main one only in the model's dimensions (n_layer, n_head,
n_embd) are its sizes. Per size, on the first component: XE against K with a ln K fit, the
decomposition's four parts (decomposition.py) and the distance to the ideal learner; between sizes,
a paired contrast at each K (the same windows; each size's seeds separate runs), Holm over the K
values of each pair of sizes.
"""
import itertools
import math
from dataclasses import dataclass, field

import numpy as np

from harness.analysis import Interval, by_k, column, stack_view, summarise_cell, window_stats
from harness.decomposition import PARTS, decompose, experiment_part_terms
from harness.experiments import differences
from harness.laws import fit_linear_in_log_k, run_level_replicates
from harness.claims import with_holm
from harness.stats import combination_interval, crossed_mean, crossed_paired_difference

SIZE_KEYS = ("n_layer", "n_head", "n_embd")     # experiments that differ only here are one family


@dataclass
class SizeResult:
    size: str
    n_params: int                   # non-embedding parameters
    experiment: str
    cells: dict                     # K -> analysis.Cell on the first component
    lnk_fit: dict = None            # laws.fit_linear_in_log_k of run-level XE against ln K
    parts: dict = field(default_factory=dict)       # K -> decomposition.Parts on mean XE
    learner_gap: dict = field(default_factory=dict)  # K -> Interval of model - learner (synthetic)


@dataclass
class SizeContrast:
    k: int
    smaller: str
    larger: str
    difference: Interval            # XE(larger) - XE(smaller), paired on the windows
    p_holm: float = math.nan


@dataclass
class PartContrast:
    k: int
    part: str                       # decomposition.PARTS
    smaller: str
    larger: str
    difference: Interval            # part(larger) - part(smaller) on mean XE, paired on the windows
    p_holm: float = math.nan        # Holm over every K and part of this pair of sizes


@dataclass
class Sizes:
    results: list                   # SizeResult, smallest model first
    contrasts: list = field(default_factory=list)
    part_contrasts: list = field(default_factory=list)


def size_family(experiments, main):
    """The main experiment and those that differ from it only in the model's dimensions."""
    return [x for x in experiments.values()
            if x.runs and all(d.key in SIZE_KEYS for d in differences(main, x))]


def size_result(x, first, n_boot, boot_seed):
    cells = by_k([r for r in x.runs if first in r.components])
    found = {k: summarise_cell(k, cell, [first]) for k, cell in cells.items()}
    summaries = {k: summary for k, (summary, _) in found.items()}
    run = cells[min(cells)][0]
    result = SizeResult(run.eval["model_size"], run.eval["n_params"], x.id, summaries)
    k_runs = [k for k, c in summaries.items() for _ in c.run_xe_mean]
    xe_runs = [v for c in summaries.values() for v in c.run_xe_mean]
    if len(summaries) >= 2:      # intervals from refitting, as for the main experiment's ln K fit
        replicates = run_level_replicates([column(means, 0) for _, means in found.values()], xe_runs,
                                          n_boot, boot_seed)
        result.lnk_fit = fit_linear_in_log_k(k_runs, xe_runs, replicates)
    docs = stack_view(cells[min(cells)], [first])[1]
    d = decompose(x, first, docs)
    result.parts = {p.k: p for p in d.parts if p.metric == "xe_mean"} if d else {}
    for k, cell in cells.items():
        model, learner = stack_view(cell, [first])[0], stack_view(cell, [first], "learner")[0]
        if learner is not None:
            gap = crossed_mean(window_stats(model.astype(np.float64) - learner), docs)
            result.learner_gap[k] = Interval.of(gap, 0)
    return result, cells, docs, experiment_part_terms(x, first, docs)


def analyse_sizes(experiments, main, first, n_boot=0, boot_seed=0):
    """Every size of the main experiment's family; None when only one size ran."""
    family = size_family(experiments, main)
    if first is None or len({tuple(x.settings.get(k) for k in SIZE_KEYS) for x in family}) < 2:
        return None
    found = [size_result(x, first, n_boot, boot_seed) for x in family]
    found.sort(key=lambda f: f[0].n_params)
    sizes = Sizes([f[0] for f in found])
    for (a, cells_a, docs, terms_a), (b, cells_b, _, terms_b) in itertools.combinations(found, 2):
        xe = []
        for k in sorted(set(cells_a) & set(cells_b)):
            larger, smaller = (window_stats(stack_view(c[k], [first])[0]) for c in (cells_b, cells_a))
            diff = crossed_paired_difference(larger, smaller, docs)
            xe.append((SizeContrast(k, a.size, b.size, Interval.of(diff, 0)), diff["p_value"][0]))
        sizes.contrasts += with_holm(xe)
        sizes.part_contrasts += part_contrasts(a, b, terms_a, terms_b)
    return sizes


def part_contrasts(a, b, terms_a, terms_b):
    """Which parts of the K effect change with size: part(b) - part(a), signed, at every K and part
    both sizes split (decomposition.experiment_part_terms), each a combination of the four arms'
    cells on the same windows (each size's seeds separate runs)."""
    found = []
    for k in sorted(set(terms_a) & set(terms_b)):
        for part in (p for p in PARTS if p in terms_a[k] and p in terms_b[k]):
            cells = terms_b[k][part] + [(cell, -coef) for cell, coef in terms_a[k][part]]
            diff = combination_interval(cells, cells[0][0].weights)
            found.append((PartContrast(k, part, a.size, b.size, Interval.of(diff, 0)), diff["p_value"][0]))
    return with_holm(found)
