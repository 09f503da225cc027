"""
What a run trains on, and in which order: the K-mixture a config names (budget/K tokens of each
component, as a seeded random subset of whole documents), each arm's share of it, every
epoch's windows (a fresh random phase per document, shuffled across components, every token a
target exactly once), the step plan that gives every K the same steps on the same tokens, and
the windows of a step as tensors on the training device (WindowSource). train.py trains on it;
evaluate.py rebuilds it to count the tokens a run saw (the learner).
"""
import math

import numpy as np
import torch

from configurator import UserError
from harness.data import BLOCK, WINDOW, gather_windows, stable_hash

EPOCH_STREAM = 0xE90C   # a constant that separates the epoch phase/order random stream from others
                        # seeded by [seed, epoch] (any fixed value would do; it must never change)


def doc_windows(doc_start, doc_end, head):
    """
    Cover every token of one document (tokens[doc_start:doc_end], whose context starts at the
    separator at doc_start - 1) as a target exactly once: a head chunk of `head` targets
    (1..BLOCK), then full chunks of BLOCK, then the remainder. Returns (starts, n_targets).
    """
    length = doc_end - doc_start
    head = min(head, length)
    cuts = np.concatenate([[0], np.arange(head, length, BLOCK), [length]])
    starts = doc_start - 1 + cuts[:-1]
    return starts.astype(np.int64), np.diff(cuts).astype(np.int64)


class Mixture:
    """
    One flat token buffer holding the run's documents, each preceded by an EOT (its context
    start: the previous document's closing EOT, or a separator at the start and after a document
    cut to fit a quota), plus WINDOW tokens of padding so every window gather stays in bounds.
    doc_start/doc_end index the buffer; doc_comp says which component a document came from.
    """

    def __init__(self, dataset, names, quotas, seed):
        pieces, starts, ends, comps, n_docs = [], [], [], [], []
        position, eot = 0, dataset.eot
        for c, (name, quota) in enumerate(zip(names, quotas)):
            tokens, offsets = dataset.tokens(name, "train"), dataset.offsets(name, "train")
            rng = np.random.default_rng([seed, stable_hash(name)])
            order = rng.permutation(len(offsets) - 1)
            taken = 0
            for d in order:
                if taken == quota:
                    break
                length = min(int(offsets[d + 1] - offsets[d]), quota - taken)  # last doc cut
                if not pieces or pieces[-1][-1] != eot:     # a separator, unless the previous
                    pieces.append(np.array([eot], dtype=np.uint16))    # document ended with one
                    position += 1
                pieces.append(tokens[offsets[d]:offsets[d] + length])
                starts.append(position)
                ends.append(position + length)
                comps.append(c)
                position += length
                taken += length
            n_docs.append(len(comps) - sum(n_docs))
        pieces.append(np.full(WINDOW, eot, dtype=np.uint16))
        self.tokens = np.concatenate(pieces)
        self.doc_start, self.doc_end = np.array(starts), np.array(ends)
        self.doc_comp = np.array(comps)
        self.n_docs = n_docs
        self.budget = int(sum(quotas))

    def epoch_windows(self, seed, epoch):
        """This epoch's windows in training order: (starts, n_targets, component) arrays."""
        rng = np.random.default_rng([seed, epoch, EPOCH_STREAM])
        heads = rng.integers(1, BLOCK + 1, size=len(self.doc_start))   # fresh phase per doc
        parts = [doc_windows(s, e, h) for s, e, h in zip(self.doc_start, self.doc_end, heads)]
        starts = np.concatenate([p[0] for p in parts])
        n_targets = np.concatenate([p[1] for p in parts])
        comp = np.repeat(self.doc_comp, [len(p[0]) for p in parts])
        order = rng.permutation(len(starts))                            # mixed across components
        return starts[order], n_targets[order], comp[order]

    def max_windows(self):
        """An upper bound on windows per epoch, whatever the phases: fixes the batch shape."""
        lengths = self.doc_end - self.doc_start
        return int(np.sum(np.ceil((lengths - 1) / BLOCK) + 1))


def resolve_mixture(dataset, cfg):
    """
    The K-mixture a config names: component names, integer token quotas summing exactly to the
    budget (budget/K each by default), and the normalised weights. One-line errors for a config
    that cannot be met.
    """
    if cfg.components:
        names = list(cfg.components)
        for name in names:
            dataset.check_component(name)
        if len(set(names)) != len(names):
            raise UserError(f"components lists a component twice: {names}")
        if cfg.k not in (1, len(names)):
            raise UserError(f"k={cfg.k} but components names {len(names)} ({', '.join(names)}); "
                            f"drop --k, or name {cfg.k} components")
    else:
        if not 1 <= cfg.k <= len(dataset.default_order):
            raise UserError(f"k={cfg.k}: the default order of {dataset.name} has "
                            f"{len(dataset.default_order)} components ({', '.join(dataset.default_order)}); "
                            f"use k in 1..{len(dataset.default_order)} or name them with --components=a,b,c")
        names = dataset.default_order[:cfg.k]
    try:
        weights = np.array(cfg.weights if cfg.weights else [1.0] * len(names), dtype=float)
    except (TypeError, ValueError):                      # --weights=1,abc
        weights = np.array([np.nan])
    if len(weights) != len(names) or not np.all(np.isfinite(weights)) or np.any(weights <= 0):
        raise UserError(f"weights={list(cfg.weights)} must be {len(names)} finite positive numbers, "
                        f"one per component ({', '.join(names)})")
    weights = weights / weights.sum()
    budget = cfg.token_budget or dataset.n_tokens(dataset.default_order[0], "train")
    # largest-remainder rounding: integer quotas that sum exactly to the budget
    raw = budget * weights
    quotas = np.floor(raw).astype(np.int64)
    for i in np.argsort(-(raw - quotas), kind="stable")[:budget - int(quotas.sum())]:
        quotas[i] += 1
    for name, quota in zip(names, quotas):
        available = dataset.n_tokens(name, "train")
        if quota > available:
            fit = int(available / weights[names.index(name)])
            raise UserError(f"token_budget={budget:,} asks {quota:,} tokens of {name}, which has "
                            f"{available:,} train tokens; use --token_budget={fit:,} or less")
    return names, [int(q) for q in quotas], [float(w) for w in weights]


# The arms of the experiment (train.py's `arm`): for every K >= 2, beside the K-mixture, three runs
# on its first component (the one in every mixture) that split the K effect into its causes
ARMS = {
    "mixture": "the K-mixture, `epochs` passes",
    "control": "steps-matched control: K = 1 on the first component's share of the mixture, epochs x K "
               "passes (the mixture's optimizer steps)",
    "exposure": "exposure-matched control: K = 1 on that share for `epochs` passes (the mixture's passes "
                "per token; 1/K of its steps)",
    "tagged": "tagged mixture: the mixture's data and steps, the model told each window's component",
}


def training_share(dataset, cfg):
    """
    What a run trains on: (components, quotas, weights, epochs), by its arm (ARMS). A mixture (and
    its tagged twin) trains on its K-mixture for `epochs` passes. The controls train on the
    mixture's first component's exact quota (the same seed draws the same documents, so the same
    tokens): the steps-matched one for epochs x K passes (the mixture's optimizer steps, up to the
    rounding of the steps per epoch), the exposure-matched one for `epochs` passes (as often as the
    mixture sees each of its tokens).
    """
    names, quotas, weights = resolve_mixture(dataset, cfg)
    if cfg.arm not in ARMS:
        raise UserError(f"arm={cfg.arm!r}: use one of {', '.join(ARMS)}")
    epochs = cfg.epochs
    if cfg.arm != "mixture" and len(names) < 2:
        raise UserError(f"arm={cfg.arm} is a twin of a mixture of K >= 2 components; use --k=2 or more")
    if cfg.arm in ("control", "exposure"):
        epochs *= len(names) if cfg.arm == "control" else 1
        names, quotas, weights = names[:1], quotas[:1], [1.0]
    if min(quotas) < cfg.batch_size * BLOCK:
        raise UserError(f"token_budget={sum(quotas):,} gives {names[0]} {min(quotas):,} tokens, less "
                        f"than one step of batch_size x {BLOCK} = {cfg.batch_size * BLOCK:,} targets; "
                        f"raise --token_budget or lower --batch_size")
    return names, quotas, weights, epochs


# -----------------------------------------------------------------------------
# the step plan: every epoch has the same number of steps, each with a fixed number of rows

def steps_per_epoch(budget, batch_size):
    """Steps an epoch takes: from the budget and batch size only, so every K takes the same."""
    return math.ceil(budget / (batch_size * BLOCK))


class StepPlan:
    """
    Splits an epoch's windows into steps_per_epoch steps of nearly equal size (they differ by
    at most one window), each padded to a fixed `rows` (padding rows have no targets), and each
    step's rows dealt to DDP ranks round-robin. steps_per_epoch depends only on the budget and
    batch size, so every K takes the same steps on the same tokens.
    """

    def __init__(self, mixture, batch_size, world):
        self.steps_per_epoch = steps_per_epoch(mixture.budget, batch_size)
        rows = math.ceil(mixture.max_windows() / self.steps_per_epoch)
        self.rows = world * math.ceil(rows / world)
        self.world = world
        self.mixture = mixture
        self._epoch, self._table = None, None

    def epoch_table(self, seed, epoch):
        """
        Every step of an epoch at once: (starts, n_targets, comp) arrays of shape
        (steps_per_epoch, rows), row j holding step j's windows then padding (start 0, no targets,
        component -1). Built once per epoch; train.py on CUDA uploads it whole, so no step copies.
        """
        if self._epoch != (seed, epoch):
            starts, n_targets, comp = self.mixture.epoch_windows(seed, epoch)
            bounds = np.linspace(0, len(starts), self.steps_per_epoch + 1).round().astype(np.int64)
            index = bounds[:-1, None] + np.arange(self.rows)[None, :]
            real = index < bounds[1:, None]
            index = np.minimum(index, len(starts) - 1)
            self._epoch = (seed, epoch)
            self._table = (np.where(real, starts[index], 0), np.where(real, n_targets[index], 0),
                           np.where(real, comp[index], -1))
        return self._table

    def step(self, seed, step):
        """The rows of a global step: (starts, n_targets, comp) arrays of length rows, and epoch."""
        epoch, j = divmod(step, self.steps_per_epoch)
        starts, n_targets, comp = self.epoch_table(seed, epoch)
        return starts[j], n_targets[j], comp[j], epoch

    def for_rank(self, rows, rank):
        """This rank's share of a step's rows: every world-th row, so ranks never overlap."""
        return tuple(a[rank::self.world] for a in rows)


# -----------------------------------------------------------------------------
# the windows of a step as tensors on the training device

class WindowSource:
    """
    Turns (starts, n_targets) into (x, y) tensors on the training device. On CUDA the mixture's
    tokens live on the GPU and windows are gathered there, from an epoch's step plan uploaded
    once (no host-to-device copy and no sync per step, so the host queues steps ahead of the
    GPU); else windows are gathered from the host buffer by the numpy twin of the same arithmetic.
    Only a tagged model's source (tagged=True) carries each row's component: other runs move no tags.
    """

    def __init__(self, tokens, device, on_device, tagged=False):
        self.device, self.on_device, self.tagged = device, on_device, tagged
        self.epoch, self.plan_on_device = None, None
        if on_device:
            self.tokens = torch.from_numpy(tokens.astype(np.int32)).to(device)
            self.offsets = torch.arange(WINDOW, device=device)
            self.positions = torch.arange(BLOCK, device=device)
        else:
            self.tokens = tokens

    def step_batch(self, plan, seed, step, rank):
        """A global step's (x, y, tags) for this rank, tags each row's component (0 for padding;
        None unless tagged), with the whole step's n_targets and components (every rank counts
        every row's tokens) and its epoch."""
        starts, n_targets, comp, epoch = plan.step(seed, step)
        if not self.on_device:
            mine = plan.for_rank((starts, n_targets, comp), rank)
            x, y = gather_windows(self.tokens, *mine[:2])
            if not self.tagged:
                return (*self.upload(x, y), None, n_targets, comp, epoch)
            return (*self.upload(x, y, np.maximum(mine[2], 0)), n_targets, comp, epoch)
        if self.epoch != (seed, epoch):
            starts_all, n_targets_all, comp_all = plan.epoch_table(seed, epoch)
            columns = [starts_all, n_targets_all] + ([np.maximum(comp_all, 0)] if self.tagged else [])
            self.plan_on_device = [torch.from_numpy(np.ascontiguousarray(a[:, rank::plan.world])).to(self.device)
                                   for a in columns]
            self.epoch = (seed, epoch)
        rows = [a[step % plan.steps_per_epoch] for a in self.plan_on_device]
        return (*self.gather(rows[0], rows[1]), rows[2] if self.tagged else None, n_targets, comp, epoch)

    def batch(self, starts, n_targets):
        """(x, y) of windows given as numpy arrays."""
        if self.on_device:
            return self.gather(torch.from_numpy(starts).to(self.device, non_blocking=True),
                               torch.from_numpy(n_targets).to(self.device, non_blocking=True))
        return self.upload(*gather_windows(self.tokens, starts, n_targets))

    def upload(self, *arrays):
        """Host arrays as tensors on the device: on CUDA pinned and non-blocking (a copy from
        pageable memory would wait for the GPU at every step)."""
        tensors = [torch.from_numpy(a) for a in arrays]
        if self.device.type == "cuda":
            return tuple(t.pin_memory().to(self.device, non_blocking=True) for t in tensors)
        return tuple(tensors)

    def gather(self, starts, n_targets):
        """(x, y) from the device's tokens for windows given as device tensors."""
        window = self.tokens[starts[:, None] + self.offsets[None, :]].long()
        # contiguous, like every other batch the model sees: a compiled model specialises on
        # strides and would otherwise compile a second graph for other callers
        x, y = window[:, :-1].contiguous(), window[:, 1:].clone()
        # masked_fill, not y[mask] = -1: boolean indexing waits for the GPU (nonzero), and a wait
        # every step stops the host from queueing the next step while this one runs
        return x, y.masked_fill_(self.positions[None, :] >= n_targets[:, None], -1)
