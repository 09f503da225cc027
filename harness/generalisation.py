"""
Research question 3: how well a model trained on K components predicts components it never saw,
against the in-context learner of a new chain (references.in_context_losses: the model class's
prior and the window's own transitions, the ideal of learning a chain in context), per K, and
whether training on more components brings it closer (the diversity question).

The held-out components are the same for every K: those in no mixture of the experiment (on the
synthetic demo, the chains after the sweep's largest K in the default order). Every comparison
is paired on their evaluation windows; the in-context learner is the same for every run.
"""
import math
from dataclasses import dataclass, field

import numpy as np

from harness.analysis import Interval, by_k, held_out, stack_view, window_stats
from harness.claims import with_holm
from harness.stats import crossed_mean, document_means, difference_interval, mean_interval


@dataclass
class UnseenRow:
    k: int
    n_seeds: int
    model: Interval                 # mean XE over the held-out windows
    context: Interval = None        # the in-context learner's (the same windows)
    gap: Interval = None            # model - in-context learner, paired
    change: Interval = None         # model(K) - model(reference K), paired: < 0 when more components help
    p_holm: float = math.nan        # of `change`, Holm over the K values


@dataclass
class Unseen:
    categories: list                # the held-out components
    rows: list = field(default_factory=list)
    uniform: float = None           # ln V: the predictor that knows nothing
    reason: str = ""                # why there is no table


def analyse_unseen(experiment):
    """The model against the in-context learner on the held-out components, per K."""
    cells = by_k(experiment.runs)
    categories = held_out(experiment.runs)
    result = Unseen(categories)
    if not categories:
        result.reason = (f"every component is in some mixture of this experiment (K up to {max(cells)}): "
                         f"none is unseen; a sweep whose largest K leaves some out has this table")
        return result
    model = {k: stack_view(cell, categories) for k, cell in cells.items()}
    docs = next(iter(model.values()))[1]
    means = {k: document_means(window_stats(values), docs) for k, (values, _) in model.items()}
    reference, changed = min(cells), []
    for k, cell in cells.items():
        values = model[k][0]
        row = UnseenRow(k, len(cell), Interval.of(mean_interval(means[k]), 0))
        context, _ = stack_view(cell, categories, "context")
        if context is not None:
            row.context = Interval.of(crossed_mean(window_stats(context[:1]), docs), 0)
            row.gap = Interval.of(crossed_mean(window_stats(values.astype(np.float64) - context), docs), 0)
            result.uniform = float(context[0, :, 0].mean())      # nothing seen yet: exactly ln V
        if k != reference:
            change = difference_interval(means[k], means[reference])
            row.change = Interval.of(change, 0)
            changed.append((row, float(change["p_value"][0])))
        result.rows.append(row)
    with_holm(changed, lambda row: row.change)
    if result.uniform is None:
        result.reason = "no in-context reference (it exists on synthetic data only): the model's XE alone"
    return result
