"""
Train one compact GPT on a mixture of K components under a fixed token budget.

    python train.py config/k4.py                          # arXiv, K = 4, default size
    python train.py config/synthetic.py --k=3 --seed=2    # synthetic chains, CPU, a minute
    torchrun --standalone --nproc_per_node=4 train.py config/k4.py    # several GPUs (DDP)

The budget is split over the K components (budget/K tokens each, as a seeded random subset of
whole documents); every epoch cuts that mixture into 101-token windows with a fresh random phase
so that every token is a target exactly once, and every run with the same budget takes the same
number of optimizer steps on the same number of tokens whatever K is.

A run folder out/<run_name>/ holds config.json, log.jsonl, ckpt.pt and, when finished, `done`.
Kill it at any time: the same command resumes from the last checkpoint and ends bit-identically
(on CPU) to an uninterrupted run.
"""
import json
import math
import os
import signal
import time
from types import SimpleNamespace

import numpy as np
import torch

from common import (BLOCK, WINDOW, Dataset, UserError, atomic_path, autocast_for, batched_losses,
                    config_defaults, configure, doc_windows, fixed_windows, gather_windows,
                    logits_batch, provenance, read_json, read_log, resolve_device, resolve_dtype,
                    resolve_switch, run_cli, stable_hash, write_json)
from model import GPT, GPTConfig

# -----------------------------------------------------------------------------
# config (module globals are the defaults; override with config files and --key=value)
# data and mixture
data_dir = "data/arxiv"
components = []             # explicit component list; empty = the first k of the default order
k = 1                       # number of components when `components` is empty
weights = []                # mixture weights over the components (default: equal)
token_budget = 0            # unique training tokens in the mixture; 0 = train tokens of the
                            # smallest top-five category, so that K = 1 uses all of it
epochs = 4                  # passes over the mixture (3 to 5 intended); fixes steps and tokens
seed = 1337                 # model init, mixture subset, epoch phases and order, dropout
# run
run_name = ""               # default: <dataset>_k<K>_<size>_s<seed>
out_dir = ""                # default: out/<run_name>
device = "auto"             # "auto", "cpu", "cuda", "cuda:1"
compile = "auto"            # torch.compile: "auto" = on for CUDA, off for CPU; True/False honoured
dtype = "auto"              # autocast: "auto" = bfloat16 on CUDA, float32 on CPU; or either by name
fused_adamw = "auto"        # fused AdamW kernel: "auto" = on for CUDA, off for CPU
gpu_resident = True         # keep the mixture's tokens on the GPU and gather windows there
cpu_threads = 0             # torch threads on CPU; 0 = torch's default. Tiny models run fastest
                            # on 1 thread (and the synthetic sweep then trains runs side by side)
# model
n_layer = 6
n_head = 6
n_embd = 384
dropout = 0.0
bias = False
block_size = BLOCK          # fixed by the measurement: XE(t) for t = 1..100
# optimisation
batch_size = 128            # windows (of 100 targets) per optimizer step
learning_rate = 1e-3
min_lr = 1e-4
warmup_iters = 200
weight_decay = 0.1
beta1 = 0.9
beta2 = 0.95
grad_clip = 1.0
# logging, validation, checkpoints
log_interval = 50           # steps between log lines
eval_interval = 500         # steps between validation losses (and at the end)
val_windows = 200           # fixed validation windows per component (val split)
ckpt_interval = 1000        # steps between checkpoints (also on SIGINT/SIGTERM and at the end)
peak_flops = 0.0            # device peak for MFU; 0 = look it up from the device name
wandb_log = False
wandb_project = "ergodic-k"
wandb_run_name = ""
# -----------------------------------------------------------------------------
# keys that do not change the numbers a run produces: a resumed run may change them
# (compile, dtype and the fused optimizer change results only by floating-point rounding)
OPERATIONAL_KEYS = {"device", "compile", "dtype", "fused_adamw", "gpu_resident", "cpu_threads",
                    "log_interval", "ckpt_interval", "peak_flops", "wandb_log", "wandb_project",
                    "wandb_run_name", "out_dir"}


# -----------------------------------------------------------------------------
# the mixture: K components, budget/K tokens each, as one token buffer of whole documents

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
        rng = np.random.default_rng([seed, epoch, 0xE90C])
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
    """Component names, integer token quotas summing exactly to the budget, and the weights."""
    if cfg.components:
        names = list(cfg.components)
        for name in names:
            dataset.check_component(name)
        if len(set(names)) != len(names):
            raise UserError(f"components lists a component twice: {names}")
    else:
        if not 1 <= cfg.k <= len(dataset.default_order):
            raise UserError(f"k={cfg.k}: the default order of {dataset.name} has "
                            f"{len(dataset.default_order)} components "
                            f"({', '.join(dataset.default_order)}); use k in 1..{len(dataset.default_order)} "
                            f"or name them with --components=a,b,c")
        names = dataset.default_order[:cfg.k]
    weights = np.array(cfg.weights if cfg.weights else [1.0] * len(names), dtype=float)
    if len(weights) != len(names) or np.any(weights <= 0):
        raise UserError(f"weights={list(cfg.weights)} must be {len(names)} positive numbers, one per "
                        f"component ({', '.join(names)})")
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


# -----------------------------------------------------------------------------
# the step plan: every epoch has the same number of steps, each with a fixed number of rows

class StepPlan:
    """
    Splits an epoch's windows into steps_per_epoch steps of nearly equal size (they differ by
    at most one window), each padded to a fixed `rows` (padding rows have no targets), and each
    step's rows dealt to DDP ranks round-robin. steps_per_epoch depends only on the budget and
    batch size, so every K takes the same steps on the same tokens.
    """

    def __init__(self, mixture, batch_size, world):
        self.steps_per_epoch = math.ceil(mixture.budget / (batch_size * BLOCK))
        rows = math.ceil(mixture.max_windows() / self.steps_per_epoch)
        self.rows = world * math.ceil(rows / world)
        self.world = world
        self.mixture = mixture
        self._epoch, self._windows = None, None

    def step(self, seed, step):
        """The rows of a global step: (starts, n_targets, comp) arrays of length rows, and epoch."""
        epoch, j = divmod(step, self.steps_per_epoch)
        if self._epoch != epoch:
            self._epoch, self._windows = epoch, self.mixture.epoch_windows(seed, epoch)
        starts, n_targets, comp = self._windows
        bounds = np.linspace(0, len(starts), self.steps_per_epoch + 1).round().astype(np.int64)
        lo, hi = bounds[j], bounds[j + 1]
        pad = self.rows - (hi - lo)
        return (np.concatenate([starts[lo:hi], np.zeros(pad, dtype=np.int64)]),
                np.concatenate([n_targets[lo:hi], np.zeros(pad, dtype=np.int64)]),
                np.concatenate([comp[lo:hi], np.full(pad, -1)]), epoch)

    def for_rank(self, rows, rank):
        """This rank's share of a step's rows: every world-th row, so ranks never overlap."""
        return tuple(a[rank::self.world] for a in rows)


class WindowSource:
    """
    Turns (starts, n_targets) into (x, y) tensors on the training device. On CUDA the mixture's
    tokens live on the GPU and windows are gathered there (no host round trip per step); else
    windows are gathered from the host buffer by the numpy twin of the same arithmetic.
    """

    def __init__(self, tokens, device, on_device):
        self.device, self.on_device = device, on_device
        if on_device:
            self.tokens = torch.from_numpy(tokens.astype(np.int32)).to(device)
            self.offsets = torch.arange(WINDOW, device=device)
            self.positions = torch.arange(BLOCK, device=device)
        else:
            self.tokens = tokens

    def batch(self, starts, n_targets):
        if self.on_device:
            starts = torch.from_numpy(starts).to(self.device, non_blocking=True)
            n_targets = torch.from_numpy(n_targets).to(self.device, non_blocking=True)
            window = self.tokens[starts[:, None] + self.offsets[None, :]].long()
            # contiguous, like every other batch the model sees: a compiled model specialises
            # on strides and would otherwise compile a second graph for other callers
            x, y = window[:, :-1].contiguous(), window[:, 1:].clone()
            # masked_fill, not y[mask] = -1: boolean indexing waits for the GPU (nonzero), and
            # a wait every step stops the host from queueing the next step while this one runs
            return x, y.masked_fill_(self.positions[None, :] >= n_targets[:, None], -1)
        x, y = gather_windows(self.tokens, starts, n_targets)
        x, y = torch.from_numpy(x), torch.from_numpy(y)
        if self.device.type == "cuda":
            return (x.pin_memory().to(self.device, non_blocking=True),
                    y.pin_memory().to(self.device, non_blocking=True))
        return x, y


class StepClock:
    """
    The data path's share of a step, timed where the work runs: CUDA events on the GPU (the host
    only queues work there, so host timers would measure the queue), wall clock on the CPU.
    Marks are cheap and taken every step; they are read only when a log line is written, after
    reading the loss has synced the device anyway.
    """

    def __init__(self, device):
        self.cuda = device.type == "cuda"

    def mark(self):
        if not self.cuda:
            return time.perf_counter()
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    def ms(self, start, end):
        if not self.cuda:
            return 1e3 * (end - start)
        end.synchronize()
        return start.elapsed_time(end)


# -----------------------------------------------------------------------------
# helpers: device, learning rate, MFU, checkpoints

PEAK_BF16_FLOPS = [("H200", 989e12), ("H100 PCIe", 756e12), ("H100", 989e12), ("GH200", 989e12),
                   ("A100", 312e12), ("L40S", 362e12), ("L4", 121e12), ("A10", 125e12),
                   ("4090", 165e12), ("3090", 71e12), ("V100", 125e12), ("T4", 65e12)]


def device_peak_flops(device, configured):
    if configured:
        return configured
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, flops in PEAK_BF16_FLOPS:
            if key in name:
                return flops
        return 0.0
    # CPU: a rough fp32 peak (cores x 2.5 GHz x 32 FLOP/cycle with AVX2 FMA), so MFU is indicative
    return torch.get_num_threads() * 2.5e9 * 32


def train_step(model, optimizer, x, y, autocast, loss_scale, grad_clip):
    """
    One optimizer step, the same on every device (bench.py times this function): per-target
    losses in autocast, summed and scaled to the step's mean over its real targets (padding
    rows have none), backward, gradient clipping, AdamW. Returns the loss as a tensor: reading
    it would sync the GPU, so the caller does that only when it logs.
    """
    with autocast:
        losses = model(x, y)
    loss = losses.sum() * loss_scale
    loss.backward()
    if grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss.detach()


def learning_rate_at(step, cfg, total_steps):
    """Linear warmup, then cosine decay to min_lr at the last step."""
    if step < cfg.warmup_iters:
        return cfg.learning_rate * (step + 1) / cfg.warmup_iters
    progress = (step - cfg.warmup_iters) / max(1, total_steps - cfg.warmup_iters)
    return cfg.min_lr + 0.5 * (1 + math.cos(math.pi * min(progress, 1.0))) * (cfg.learning_rate - cfg.min_lr)


def size_label(cfg):
    return f"{cfg.n_layer}L-{cfg.n_embd}d"


def validation_loss(model, windows, device, autocast):
    """Mean loss on the fixed validation windows, per component."""
    model.eval()
    batch = logits_batch(model.config.padded_vocab)
    result = {name: float(batched_losses(model, x, y, device, batch, autocast).mean())
              for name, (x, y) in windows.items()}
    model.train()
    return result


# -----------------------------------------------------------------------------

def main(argv):
    cfg = SimpleNamespace(**configure(config_defaults(globals()), argv))
    if cfg.block_size != BLOCK:
        raise UserError(f"block_size={cfg.block_size}: the measurement is XE(t) for t = 1..{BLOCK}, "
                        f"so block_size is fixed at {BLOCK}")
    if not 1 <= cfg.epochs <= 100:
        raise UserError(f"epochs={cfg.epochs}: use a positive number of epochs (3 to 5 intended)")
    for key in ("batch_size", "n_layer", "n_head", "n_embd", "log_interval", "eval_interval",
                "ckpt_interval", "val_windows"):
        if getattr(cfg, key) < 1:
            raise UserError(f"{key}={getattr(cfg, key)}: must be a positive integer")
    if cfg.token_budget < 0:
        raise UserError(f"token_budget={cfg.token_budget}: use a positive number, or 0 for the default")
    if cfg.n_embd % cfg.n_head:
        raise UserError(f"n_embd={cfg.n_embd} is not a multiple of n_head={cfg.n_head}")
    wandb = None
    if cfg.wandb_log:                      # checked before any work, used by rank 0 only
        try:
            import wandb
        except ImportError:
            raise UserError("wandb_log=True but wandb is not installed: `pip install wandb`, "
                            "or drop --wandb_log")

    # distributed setup: torchrun sets RANK/WORLD_SIZE; each rank takes its share of every step
    ddp = int(os.environ.get("WORLD_SIZE", "1")) > 1
    rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    if ddp:
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        use_cuda = torch.cuda.is_available() and cfg.device != "cpu"
        torch.distributed.init_process_group(backend="nccl" if use_cuda else "gloo")
        device = torch.device(f"cuda:{local_rank}") if use_cuda else torch.device("cpu")
        if use_cuda:
            torch.cuda.set_device(device)
    else:
        device = resolve_device(cfg.device)
    master = rank == 0
    log = print if master else (lambda *a, **k: None)

    dataset = Dataset(cfg.data_dir)
    names, quotas, weights = resolve_mixture(dataset, cfg)
    cfg.components, cfg.k, cfg.weights, cfg.token_budget = names, len(names), weights, sum(quotas)
    cfg.run_name = cfg.run_name or f"{dataset.name}_k{cfg.k}_{size_label(cfg)}_s{cfg.seed}"
    cfg.out_dir = cfg.out_dir or os.path.join("out", cfg.run_name)
    paths = SimpleNamespace(config=os.path.join(cfg.out_dir, "config.json"),
                            log=os.path.join(cfg.out_dir, "log.jsonl"),
                            ckpt=os.path.join(cfg.out_dir, "ckpt.pt"),
                            done=os.path.join(cfg.out_dir, "done"))
    if os.path.exists(paths.done):
        log(f"{cfg.out_dir} is already finished ({paths.done}); nothing to do "
            f"(delete the folder to train it again)")
        return
    if os.path.exists(paths.config):
        saved_run = read_json(paths.config)
        if saved_run["dataset"]["meta_sha"] != dataset.meta_sha:
            raise UserError(f"{cfg.out_dir} was started on a different build of {cfg.data_dir} "
                            f"(meta.json changed since); delete {cfg.out_dir} to train it afresh")
        saved = saved_run["config"]
        changed = [k for k in saved if k not in OPERATIONAL_KEYS and saved[k] != vars(cfg).get(k)]
        if changed:
            k0 = changed[0]
            raise UserError(f"{cfg.out_dir} holds a run with a different config ({k0}: "
                            f"{saved[k0]!r} there, {vars(cfg)[k0]!r} now); pick another "
                            f"--run_name or delete {cfg.out_dir}")

    # seeds for everything; determinism on CPU makes resume bit-identical
    torch.manual_seed(cfg.seed)
    if cfg.cpu_threads:
        torch.set_num_threads(cfg.cpu_threads)
    is_cuda = device.type == "cuda"
    if is_cuda:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    dtype = resolve_dtype(cfg.dtype, device)
    autocast = autocast_for(device, dtype)
    use_compile, use_fused = resolve_switch(cfg.compile, device), resolve_switch(cfg.fused_adamw, device)

    t_build = time.time()
    mixture = Mixture(dataset, names, quotas, cfg.seed)
    plan = StepPlan(mixture, cfg.batch_size, world)
    total_steps = cfg.epochs * plan.steps_per_epoch
    on_device = is_cuda and cfg.gpu_resident
    source = WindowSource(mixture.tokens, device, on_device)
    val_windows = {}
    for name in names:
        starts, _ = fixed_windows(dataset, name, "val", cfg.val_windows, seed=0)
        val_windows[name] = gather_windows(dataset.tokens(name, "val"), starts)

    model = GPT(GPTConfig.from_run(vars(cfg), dataset.vocab_size))
    model.to(device)
    optimizer = model.configure_optimizer(cfg.weight_decay, cfg.learning_rate,
                                          (cfg.beta1, cfg.beta2), fused=use_fused)
    step, tokens_seen = 0, np.zeros(len(names), dtype=np.int64)
    if os.path.exists(paths.ckpt):
        # loaded on the CPU: RNG states must stay CPU byte tensors; the optimizer state follows
        # its parameters to the device in load_state_dict
        ckpt = torch.load(paths.ckpt, map_location="cpu", weights_only=False)
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        step, tokens_seen = ckpt["step"], np.array(ckpt["tokens_seen"], dtype=np.int64)
        torch.set_rng_state(ckpt["rng_cpu"])
        if is_cuda and ckpt.get("rng_cuda") is not None:
            torch.cuda.set_rng_state(ckpt["rng_cuda"], device)
        log(f"resuming {cfg.out_dir} from step {step:,}/{total_steps:,}")
    flops_per_token = model.flops_per_token()
    n_params = model.n_params()
    raw_model = model
    if use_compile:
        model = torch.compile(model)
    if ddp:
        model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if is_cuda else None)

    if master:
        os.makedirs(cfg.out_dir, exist_ok=True)
        write_json(paths.config, {
            "config": vars(cfg),
            "model": {"n_params": n_params, "size": size_label(cfg), "flops_per_token": flops_per_token},
            "mixture": {"components": names, "weights": weights,
                        "tokens": dict(zip(names, quotas)), "docs": dict(zip(names, mixture.n_docs)),
                        "budget": mixture.budget},
            "schedule": {"steps": total_steps, "steps_per_epoch": plan.steps_per_epoch,
                         "epochs": cfg.epochs, "rows_per_step": plan.rows,
                         "tokens_per_epoch": mixture.budget},
            "dataset": {"name": dataset.name, "source": dataset.source, "dir": cfg.data_dir,
                        "meta_sha": dataset.meta_sha},
            "provenance": provenance(), "device": str(device), "world_size": world,
            "runtime": {"compiled": use_compile, "dtype": dtype, "fused_adamw": use_fused,
                        "data_on_device": on_device}})
        # drop log lines past the checkpoint: the resumed run will write them again
        kept = [r for r in read_log(paths.log) if r["step"] <= step]
        with atomic_path(paths.log) as tmp, open(tmp, "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in kept)
    log(f"{cfg.run_name}: K={cfg.k} ({', '.join(names)}), {mixture.budget:,} tokens "
        f"({', '.join(f'{q:,}' for q in quotas)}), {cfg.epochs} epochs = {total_steps:,} steps of "
        f"~{cfg.batch_size} windows; model {size_label(cfg)} with {n_params / 1e6:.2f}M params; "
        f"{device} ({'compiled' if use_compile else 'eager'}, {dtype}"
        f"{', fused AdamW' if use_fused else ''}); "
        f"data {'on device' if on_device else 'gathered on host'}; setup {time.time() - t_build:.1f}s")

    use_wandb = master and wandb is not None
    if use_wandb:
        wandb.init(project=cfg.wandb_project, name=cfg.wandb_run_name or cfg.run_name,
                   config=vars(cfg), resume="allow")

    # SIGINT/SIGTERM: finish the current step, save a checkpoint, exit
    stop = {"signal": None}
    def request_stop(signum, frame):
        stop["signal"] = signum
    previous_handlers = {s: signal.signal(s, request_stop) for s in (signal.SIGINT, signal.SIGTERM)}

    def save_checkpoint():
        if not master:
            return
        state = {"model": raw_model.state_dict(), "optimizer": optimizer.state_dict(), "step": step,
                 "tokens_seen": tokens_seen.tolist(), "rng_cpu": torch.get_rng_state(),
                 "rng_cuda": torch.cuda.get_rng_state(device) if is_cuda else None,
                 "config": vars(cfg)}
        with atomic_path(paths.ckpt) as tmp:
            torch.save(state, tmp)

    peak = device_peak_flops(device, cfg.peak_flops)
    log_file = open(paths.log, "a") if master else None
    def write_log(record):
        if master:
            log_file.write(json.dumps(record) + "\n")
            log_file.flush()
            if use_wandb:
                wandb.log({k: v for k, v in record.items() if isinstance(v, (int, float))}, step=record["step"])

    clock = StepClock(device)
    t_start, step_start = time.time(), step
    t_interval, tokens_interval = time.time(), 0
    model.train()
    try:
        while step < total_steps:
            t_begin = clock.mark()
            starts, n_targets, comp, epoch = plan.step(cfg.seed, step)
            total_targets = int(n_targets.sum())
            x, y = source.batch(*plan.for_rank((starts, n_targets), rank))
            t_data = clock.mark()
            lr = learning_rate_at(step, cfg, total_steps)
            for group in optimizer.param_groups:
                group["lr"] = lr
            # the step's mean over all its targets, across ranks (DDP averages gradients)
            loss = train_step(model, optimizer, x, y, autocast, world / total_targets, cfg.grad_clip)
            t_end = clock.mark()
            step += 1
            real = comp >= 0
            np.add.at(tokens_seen, comp[real], n_targets[real])
            tokens_interval += total_targets

            stopping = stop["signal"] is not None
            if ddp:   # ranks agree to stop at the same step; only at log steps, to sync rarely
                stopping = False
                if step % cfg.log_interval == 0:
                    flag = torch.tensor([float(stop["signal"] is not None)], device=device)
                    torch.distributed.all_reduce(flag)
                    stopping = flag.item() > 0
            checkpoint_now = step % cfg.ckpt_interval == 0 or step == total_steps or stopping
            logging_now = step % cfg.log_interval == 0 or step == total_steps
            if logging_now or checkpoint_now:
                # reading the loss syncs the GPU, so only here; never checkpoint a diverged model
                loss_value = loss.item() / world
                if ddp:
                    reduced = torch.tensor([loss_value], device=device)
                    torch.distributed.all_reduce(reduced)
                    loss_value = reduced.item()
                finite = math.isfinite(loss_value) and (not checkpoint_now or all(
                    bool(torch.isfinite(p).all()) for p in raw_model.parameters()))
                if not finite:
                    raise UserError(f"training diverged at step {step} (loss {loss_value}, lr "
                                    f"{lr:.2e}): the run stopped and its last good checkpoint "
                                    f"({paths.ckpt}) is kept; lower --learning_rate or raise "
                                    f"--warmup_iters and rerun")
            if logging_now:
                now = time.time()
                tok_per_s = tokens_interval / max(now - t_interval, 1e-9)
                mfu = flops_per_token * tok_per_s / (peak * world) if peak else 0.0
                eta = (now - t_start) / max(step - step_start, 1) * (total_steps - step)
                memory = {"peak_mem_gb": round(torch.cuda.max_memory_allocated(device) / 1e9, 3)} \
                    if is_cuda else {}
                step_ms, data_ms = clock.ms(t_begin, t_end), clock.ms(t_begin, t_data)
                write_log({"kind": "train", "step": step, "epoch": epoch, "loss": round(loss_value, 6),
                           "lr": lr, "tokens": int(tokens_seen.sum()), "tok_per_s": round(tok_per_s),
                           "mfu": round(mfu, 4), "step_ms": round(step_ms, 3),
                           "data_ms": round(data_ms, 3), "elapsed": round(now - t_start, 2), **memory})
                log(f"step {step:>6}/{total_steps} | epoch {epoch + 1}/{cfg.epochs} | loss "
                    f"{loss_value:.4f} | lr {lr:.2e} | {tok_per_s:,.0f} tok/s | MFU "
                    f"{100 * mfu:.1f}% | data {100 * data_ms / max(step_ms, 1e-9):.1f}% | ETA {_duration(eta)}"
                    + (f" | {memory['peak_mem_gb']:.1f} GB" if memory else ""))
                t_interval, tokens_interval = now, 0
            if step % cfg.eval_interval == 0 or step == total_steps:
                val = validation_loss(raw_model, val_windows, device, autocast)
                val_loss = float(np.mean(list(val.values())))
                write_log({"kind": "val", "step": step, "tokens": int(tokens_seen.sum()),
                           "val_loss": round(val_loss, 6), "val_loss_per_component":
                           {k: round(v, 6) for k, v in val.items()}})
                log(f"step {step:>6}: val loss {val_loss:.4f} ("
                    + ", ".join(f"{k} {v:.3f}" for k, v in val.items()) + ")")
            if checkpoint_now:
                save_checkpoint()
            if stopping:
                log(f"stopped by signal at step {step:,}; checkpoint saved; run the same command "
                    f"to resume")
                raise SystemExit(130 if stop["signal"] == signal.SIGINT else 143)
    finally:
        for s, handler in previous_handlers.items():
            signal.signal(s, handler)
        if log_file:
            log_file.close()

    if master:
        records = read_log(paths.log)
        val_records = [r for r in records if r["kind"] == "val"]
        summary = {"steps": step, "tokens": int(tokens_seen.sum()),
                   "tokens_per_component": dict(zip(names, tokens_seen.tolist())),
                   "final_val_loss": val_records[-1]["val_loss"] if val_records else None,
                   "elapsed_s": round(time.time() - t_start, 2)}
        write_json(paths.done, summary)
        log(f"done: {cfg.out_dir} ({summary['tokens']:,} tokens, val loss "
            f"{summary['final_val_loss']:.4f})")
    if use_wandb:
        wandb.finish()
    if ddp:
        torch.distributed.destroy_process_group()


def _duration(seconds):
    seconds = int(seconds)
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else \
        f"{seconds // 60}m{seconds % 60:02d}s"


if __name__ == "__main__":
    run_cli(main)
