"""
The K effect on the first component (the one in every mixture), cause by cause. For every K >= 2
and seed, beside the K-mixture M, three runs on the first component (mixture.ARMS): the
steps-matched control C_S (K = 1 on its share, the mixture's steps), the exposure-matched control
C_E (the same share, the mixture's passes per token: 1/K of its steps) and the tagged mixture T
(the mixture, the model told each window's component). Then, paired on the shared windows,

    XE_M(K) - XE_1 = scarcity        C_S - XE_1      fewer unique tokens, the same steps
                   + dilution        C_E - C_S       1/K of the steps on the component
                   + sharing         T - C_E         one network for K components (< 0: transfer)
                   + identification  M - T           inferring the component in context

each part the paired difference of its own two arms with the crossed interval (stats.py), and
the four sum to the total exactly: every arm enters over the same seeds (the seeds that have all
of them; the others are left out of every part, named). On synthetic data the learner's parts
from the same baseline stand beside them: scarcity learner1(K) - learner1(1), identification
learner(K) - learner1(K) (no dilution or sharing: it has neither steps nor a network).
"""
import itertools
import math
from dataclasses import dataclass, field

import numpy as np

from harness.analysis import METRICS, Interval, stack_view, window_stats
from harness.stats import combination_interval, crossed_mean, document_means

PARTS = {   # part: (the arm above, the arm below); "one" is the K = 1 mixture
    "scarcity": ("control", "one"),
    "dilution": ("exposure", "control"),
    "sharing": ("tagged", "exposure"),
    "identification": ("mixture", "tagged"),
}
PART_LABELS = {"scarcity": "data scarcity", "dilution": "compute dilution",
               "sharing": "capacity sharing", "identification": "identification"}


@dataclass
class Parts:
    """One K and metric: the total excess over K = 1 and the parts its arms allow."""
    k: int
    metric: str
    total: Interval                         # M(K) - M(1), over the parts' seeds when there are parts
    parts: dict = field(default_factory=dict)           # part -> Interval (arms present)
    seeds: list = field(default_factory=list)           # the seeds every arm of this K has
    left_out: dict = field(default_factory=dict)        # arm -> seeds without every other arm
    magnitudes: dict = field(default_factory=dict)      # (a, b) -> |a| - |b| as s_a a - s_b b (signs fixed)


@dataclass
class LearnerParts:
    """The ideal learner's K effect from the same baseline (synthetic data), and the network's
    identification against it."""
    k: int
    metric: str
    scarcity: Interval                      # learner1(K) - learner1(1)
    identification: Interval                # learner(K) - learner1(K)
    network: Interval = None                # the network's identification (mixture - tagged), if it ran
    ratio: float = math.nan                 # network / ideal identification (both exclude 0, one sign)


@dataclass
class Decomposition:
    first: str
    parts: list                             # Parts per K >= 2 and metric
    arms: dict                              # K -> the arms that ran (beside the mixture)
    learner: list = field(default_factory=list)         # LearnerParts per K and metric (synthetic)
    bayes_area: dict = field(default_factory=dict)      # K -> sum_t [bayes - oracle] (<= ln K)
    tagged_t: dict = field(default_factory=dict)        # K -> the tagged mixture's XE(t) on the first component
    learner_alpha: dict = field(default_factory=dict)   # chain -> (lowest, highest) fitted alpha


def identification_ratio(network, ideal):
    """How many times the ideal learner's identification the network pays: only where both
    intervals exclude 0 on the same side (else a ratio of noise, or of opposite signs)."""
    if network is None or not (network.separated_from_zero and ideal.separated_from_zero) \
            or network.value * ideal.value <= 0:
        return math.nan
    return network.value / ideal.value


def by_seed(runs):
    return {str(r.seed): r for r in runs}


def arm_means(runs, seeds, first, docs, kind="model"):
    """DocumentMeans of the window statistics of these runs' seeds (in that order) on `first`."""
    values, _ = stack_view([runs[s] for s in seeds], [first], kind)
    return None if values is None else document_means(window_stats(values), docs)


def docs_weights(means):
    return next(iter(means.values())).weights


def k_means(arms, first, docs):
    """Each arm's DocumentMeans on `first` over the seeds every arm of this K has (K = 1 over its
    own seeds), which seeds those are, and the seeds left out: {arm: means}, seeds, left_out."""
    present = [a for a in ("control", "exposure", "tagged") if arms.get(a)]
    needed = ["mixture"] + present
    seeds = sorted(set.intersection(*(set(arms[a]) for a in needed)), key=str)
    left_out = {a: sorted(set(arms[a]) - set(seeds), key=str) for a in needed if set(arms[a]) - set(seeds)}
    if not seeds:                       # no seed ran every arm: no part pairs, the total alone
        seeds, left_out = sorted(arms["mixture"], key=str), {a: sorted(arms[a], key=str) for a in present}
        needed = ["mixture"]
    means = {a: arm_means(arms[a], seeds if a != "one" else sorted(arms["one"], key=str), first, docs)
             for a in needed + ["one"]}
    return {a: m for a, m in means.items() if m is not None}, seeds, left_out


def part_terms(means):
    """Each part its arms allow as [(DocumentMeans, coefficient)]: upper arm + 1, lower arm - 1."""
    return {name: [(means[upper], 1.0), (means[lower], -1.0)] for name, (upper, lower) in PARTS.items()
            if upper in means and lower in means}


def k_parts(k, arms, first, docs):
    """Parts of one K: arms is {"one", "mixture", "control", "exposure", "tagged": {seed: run}}."""
    available, seeds, left_out = k_means(arms, first, docs)
    weights = docs_weights(available)
    parts = {name: combination_interval(t, weights) for name, t in part_terms(available).items()}
    total = combination_interval([(available["mixture"], 1.0), (available["one"], -1.0)], weights)
    result = [Parts(k, m, Interval.of(total, i), {p: Interval.of(v, i) for p, v in parts.items()}, seeds, left_out)
              for i, m in enumerate(METRICS)]
    # which part is larger in magnitude: s_a a - s_b b for every pair, s the sign of each estimate
    # (the arms of the two parts merged, so an arm in both counts once)
    for i, p in enumerate(result):
        for a, b in itertools.combinations(parts, 2):
            signs = {a: np.sign(p.parts[a].value) or 1.0, b: -(np.sign(p.parts[b].value) or 1.0)}
            merged = {}
            for name in (a, b):
                for arm, c in zip(PARTS[name], (1.0, -1.0)):       # upper arm + 1, lower arm - 1
                    merged[arm] = merged.get(arm, 0.0) + signs[name] * c
            terms_ab = [(available[arm], c) for arm, c in merged.items()]
            p.magnitudes[a, b] = Interval.of(combination_interval(terms_ab, weights), i)
    return result


def learner_parts(k, cells, first, docs):
    """The learner's scarcity and identification from K = 1 (its own runs' references), per metric."""
    def mean(runs, kind):
        values, _ = stack_view(runs, [first], kind)
        return values
    one_l1, k_l1, k_l = mean(cells[1], "learner1"), mean(cells[k], "learner1"), mean(cells[k], "learner")
    if any(v is None for v in (one_l1, k_l1, k_l)):
        return []
    scarcity = combination_interval([(document_means(window_stats(k_l1), docs), 1.0),
                                     (document_means(window_stats(one_l1), docs), -1.0)],
                                    document_means(window_stats(k_l1), docs).weights)
    identification = crossed_mean(window_stats(k_l.astype(np.float64) - k_l1), docs)
    return [LearnerParts(k, m, Interval.of(scarcity, i), Interval.of(identification, i))
            for i, m in enumerate(METRICS)]


def learner_alphas(runs):
    """Each chain's Dirichlet prior fitted to a run's own counts (eval.json), as a range over runs."""
    fitted = {}
    for r in runs:
        for chain, alpha in r.eval.get("learner_alpha", {}).items():
            fitted.setdefault(chain, []).append(alpha)
    return {chain: (min(a), max(a)) for chain, a in sorted(fitted.items())}


def arm_cells(experiment):
    """{arm: {K: runs}} of an experiment's mixtures and its other arms."""
    cells = {}
    for arm in ("mixture", "control", "exposure", "tagged"):
        for r in experiment.arm(arm):
            cells.setdefault(arm, {}).setdefault(r.k, []).append(r)
    return cells


def k_arms(cells, k):
    """One K's arms by seed: the K = 1 mixture ("one"), the K-mixture and the arms that ran."""
    arms = {"one": by_seed(cells["mixture"][1]), "mixture": by_seed(cells["mixture"][k])}
    arms.update({a: by_seed(cells[a][k]) for a in ("control", "exposure", "tagged") if k in cells.get(a, {})})
    return arms


def experiment_part_terms(experiment, first, docs):
    """{K: {part: [(DocumentMeans, coefficient)]}}: each part's cells, for contrasts between
    experiments on the same windows (sizes.py: a part of one size against another's)."""
    cells = arm_cells(experiment)
    mixtures = cells.get("mixture", {})
    if 1 not in mixtures:
        return {}
    return {k: part_terms(k_means(k_arms(cells, k), first, docs)[0]) for k in sorted(mixtures) if k >= 2}


def decompose(experiment, first, docs):
    """Every K >= 2 of the experiment, split into the parts its arms allow; None without K = 1."""
    cells = arm_cells(experiment)
    mixtures = cells.get("mixture", {})
    if 1 not in mixtures or first is None:
        return None
    result = Decomposition(first, [], {}, learner_alpha=learner_alphas(experiment.runs + experiment.twins))
    for k in sorted(k for k in mixtures if k >= 2):
        arms = k_arms(cells, k)
        result.arms[k] = [a for a in ("control", "exposure", "tagged") if a in arms]
        result.parts += k_parts(k, arms, first, docs)
        result.learner += learner_parts(k, mixtures, first, docs)
        tagged, _ = stack_view(cells["tagged"][k], [first]) if k in cells.get("tagged", {}) else (None, None)
        if tagged is not None:
            result.tagged_t[k] = tagged.mean(axis=(0, 1)).tolist()
        bayes, oracle = (stack_view(mixtures[k], [first], kind)[0] for kind in ("bayes", "oracle"))
        if bayes is not None and oracle is not None:
            result.bayes_area[k] = Interval.of(crossed_mean((bayes.astype(np.float64) - oracle).sum(-1), docs))
    network = {(p.k, p.metric): p.parts.get("identification") for p in result.parts}
    for lp in result.learner:
        lp.network = network.get((lp.k, lp.metric))
        lp.ratio = identification_ratio(lp.network, lp.identification)
    return result
