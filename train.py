"""
Train one compact GPT on a mixture of K components under a fixed token budget.

    python train.py config/k4.py                          # arXiv, K = 4, default size
    python train.py config/k4.py --arm=control            # its steps-matched K = 1 control (ARMS)
    python train.py config/synthetic.py --k=3 --seed=2    # synthetic chains, CPU, a minute
    torchrun --standalone --nproc_per_node=4 train.py config/k4.py    # several GPUs (DDP)

The budget is split over the K components (budget/K tokens each, as a seeded random subset of
whole documents; mixture.py); every epoch cuts that mixture into 101-token windows with a fresh
random phase so that every token is a target exactly once, and every run with the same budget
takes the same number of optimizer steps on the same number of tokens whatever K is.

A run's folder, out/<dataset>_k<K>[ctrl]_<size>_s<seed>_<identity>/, holds config.json,
log.jsonl, ckpt.pt and, when finished, `done`; the identity (runs.py) decides whether a folder
holds this run. Kill it at any time: the same command resumes from the last checkpoint and ends
bit-identically (on CPU) to an uninterrupted run; a finished run does nothing.
"""
import contextlib
import importlib.util
import json
import math
import os
import signal
import time
from collections import namedtuple
from types import SimpleNamespace

import numpy as np
import torch

from configurator import UserError, check_settings, config_defaults, configure, run_cli
from harness.data import Dataset, fixed_windows, gather_windows
from harness.mixture import Mixture, StepPlan, WindowSource, resolve_mixture, steps_per_epoch, training_share
from model import (GPT, GPTConfig, StepClock, autocast_for, batched_losses, logits_batch, resolve_device,
                   resolve_dtype, resolve_loss_impl, resolve_switch, LOSS_IMPLS, device_peak_flops)
from harness.runs import (TRAINING_CODE, atomic_path, code_fingerprint, default_run_name, duration,
                          experiment_identity, full_disk_is_one_line, identity_config, load_checkpoint,
                          lock_folder, provenance, read_log, read_run_file, run_identity, size_label,
                          stop_with_sweep, write_json)

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
arm = "mixture"             # "mixture", or a twin of this K-mixture on its first component that
                            # splits the K effect (harness/mixture.py ARMS): "control" (K = 1 on
                            # its share, the mixture's steps), "exposure" (K = 1 on its share, its
                            # passes per token), "tagged" (the mixture, the model told the component)
seed = 1337                 # model init, mixture subset, epoch phases and order, dropout
# run
out_root = "out"            # run folders go to out_root/<run_name>
run_name = ""               # default: <dataset>_k<K>[ctrl]_<size>_s<seed>_<identity>
out_dir = ""                # default: out_root/run_name
print_run_dir = False       # print the run's folder and exit (sweep.sh asks this)
device = "auto"             # "auto", "cpu", "cuda", "cuda:1"
compile = "auto"            # torch.compile: "auto" = on for CUDA, off for CPU; True/False honoured
dtype = "auto"              # autocast: "auto" = bfloat16 on CUDA, float32 on CPU; or either by name
fused_adamw = "auto"        # fused AdamW kernel: "auto" = on for CUDA, off for CPU
loss_impl = "auto"          # training's output layer + cross entropy: "full" (the logits, then the
                            # loss; "auto", the fastest) or "chunked" (never the full logits)
gpu_resident = "auto"       # keep the mixture's tokens on the device and gather windows there:
                            # "auto" = on for CUDA; True on CPU runs the CUDA path's torch gather
cpu_threads = 0             # torch threads on CPU; 0 = torch's default. Tiny models run fastest
                            # on 1 thread (and the synthetic sweep then trains runs side by side)
# model (config/tiny.py, small.py, medium.py set these; size names them in run names and tables)
size = "small"
n_layer = 6
n_head = 6
n_embd = 384
dropout = 0.0
bias = False
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
keep_optimizer = True       # False: a finished run's ckpt.pt keeps only what evaluation needs (1/3 size)
peak_flops = 0.0            # device peak for MFU; 0 = look it up from the device name
wandb_log = False
wandb_project = "ergodic-k"
wandb_run_name = ""
# -----------------------------------------------------------------------------
# (which of these keys make a run's identity: runs.NOT_IDENTITY lists those that do not; the
# identity also holds the data's fingerprint and this code's: edit train.py and runs train anew)
TRAINING_CODE_NOW = code_fingerprint(TRAINING_CODE)


# -----------------------------------------------------------------------------
# helpers: the step, the learning rate, validation

def train_step(model, optimizer, x, y, autocast, loss_scale, grad_clip, tags=None):
    """
    One optimizer step, the same on every device (bench.py times this function): per-target
    losses in autocast, summed and scaled to the step's mean over its real targets (padding
    rows have none), backward, gradient clipping, AdamW. Returns the loss as a tensor: reading
    it would sync the GPU, so the caller does that only when it logs. tags: a tagged mixture's
    components per window (None for every other arm).
    """
    with autocast:
        losses = model(x, y, tags=tags)
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


def validation_loss(model, windows, device, autocast):
    """Mean loss on the fixed validation windows, per component (a tagged model told which)."""
    model.eval()
    batch = logits_batch(model.config.padded_vocab)
    tags = {name: (i if model.tag is not None else None) for i, name in enumerate(windows)}
    result = {name: float(batched_losses(model, x, y, device, batch, autocast, tags[name]).mean())
              for name, (x, y) in windows.items()}
    model.train()
    return result


# -----------------------------------------------------------------------------
# setup: the config, the run's identity and folder, the model and its state

def read_config(argv):
    """The config with every range checked (one line per mistake, before any work)."""
    cfg = SimpleNamespace(**configure(config_defaults(globals()), argv))
    checks = [(1 <= cfg.epochs <= 100, "epochs", "use 1 to 100 passes (3 to 5 intended)"),
              (0 <= cfg.seed < 2 ** 63, "seed", "use a seed >= 0 (and below 2**63)"),
              (0 <= cfg.beta1 < 1, "beta1", "use 0 <= beta1 < 1"),
              (0 <= cfg.beta2 < 1, "beta2", "use 0 <= beta2 < 1"),
              (cfg.weight_decay >= 0, "weight_decay", "use weight_decay >= 0"),
              (cfg.grad_clip >= 0, "grad_clip", "use grad_clip >= 0 (0: no clipping)"),
              (cfg.warmup_iters >= 0, "warmup_iters", "use warmup_iters >= 0"),
              (0 <= cfg.dropout < 1, "dropout", "use 0 <= dropout < 1"),
              (cfg.token_budget >= 0, "token_budget", "use a positive number, or 0 for the default"),
              (cfg.n_embd % cfg.n_head == 0, "n_embd", f"must be a multiple of n_head={cfg.n_head}"),
              (0 < cfg.learning_rate < math.inf and 0 <= cfg.min_lr < math.inf, "learning_rate",
               "use a finite positive rate"),
              (cfg.dtype in ("auto", "bfloat16", "float32"), "dtype", "use auto, bfloat16 or float32"),
              (cfg.loss_impl in ("auto", *LOSS_IMPLS), "loss_impl", f"use auto, {', '.join(LOSS_IMPLS)}")]
    checks += [(getattr(cfg, key) in ("auto", True, False), key, "use auto, True or False")
               for key in ("compile", "fused_adamw", "gpu_resident")]
    checks += [(getattr(cfg, key) >= 1, key, "must be a positive integer")
               for key in ("batch_size", "n_layer", "n_head", "n_embd", "log_interval",
                           "eval_interval", "ckpt_interval", "val_windows")]
    check_settings(cfg, checks)
    if cfg.wandb_log and importlib.util.find_spec("wandb") is None:
        raise UserError("wandb_log=True but wandb is not installed: `pip install wandb`, or drop --wandb_log")
    return cfg


def distributed_setup(cfg):
    """(device, rank, world): torchrun sets RANK/WORLD_SIZE; each rank takes its share of a step."""
    rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return resolve_device(cfg.device), 0, 1
    use_cuda = torch.cuda.is_available() and cfg.device != "cpu"
    torch.distributed.init_process_group(backend="nccl" if use_cuda else "gloo")
    local = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    device = torch.device(local if use_cuda else "cpu")
    if use_cuda:
        torch.cuda.set_device(device)
    return device, rank, world


# What this process trains (fixed once set up), and where: the handful of facts every helper below
# is given, instead of one namespace of everything.
Share = namedtuple("Share", "components quotas weights epochs")       # what the run trains on
Place = namedtuple("Place", "device rank world")                       # where: device and DDP rank
Job = namedtuple("Job", "cfg paths share total_steps place")            # the run, resolved
Model = namedtuple("Model", "raw net optimizer autocast")              # net: compiled / DDP-wrapped


def resolve_run(dataset, cfg):
    """The run a config names: its mixture resolved into cfg (the resolved config is what
    config.json saves and the identity hashes), its identity, name and folder. Returns paths."""
    names, quotas, weights = resolve_mixture(dataset, cfg)
    cfg.components, cfg.k, cfg.weights, cfg.token_budget = names, len(names), weights, sum(quotas)
    cfg.identity = run_identity(vars(cfg), dataset.fingerprint, TRAINING_CODE_NOW["fingerprint"])
    cfg.run_name = cfg.run_name or default_run_name(vars(cfg), dataset.name, cfg.identity,
                                                    size_label(vars(cfg)))
    cfg.out_dir = cfg.out_dir or os.path.join(cfg.out_root, cfg.run_name)
    return SimpleNamespace(**{f: os.path.join(cfg.out_dir, name) for f, name in
                              (("config", "config.json"), ("log", "log.jsonl"), ("ckpt", "ckpt.pt"),
                               ("done", "done"))})


def resolve(dataset, cfg):
    """The run and its share of the data (paths, Share); a K the data cannot give is refused here."""
    return resolve_run(dataset, cfg), Share(*training_share(dataset, cfg))


def print_run_dirs(lines):
    """--print_run_dir for a whole grid in one start (sweep.sh): each line one run's arguments,
    separated by \\x1f; each answer one line, the run's folder or `error: ...`."""
    datasets = {}
    for line in lines:
        try:
            cfg = read_config(line.rstrip("\n").split("\x1f"))
            if cfg.data_dir not in datasets:
                datasets[cfg.data_dir] = Dataset(cfg.data_dir)
            resolve(datasets[cfg.data_dir], cfg)
            print(cfg.out_dir, flush=True)
        except UserError as e:
            print(f"error: {e}", flush=True)


def check_folder(cfg, paths, total_steps):
    """
    Whether the folder holds this run (by identity), and whether it is finished: a done marker
    whose steps match the schedule and the checkpoint's. Anything else in the folder is refused,
    named; a done marker that disagrees with the checkpoint is dropped and the run resumed.
    """
    # a damaged config.json counts as missing: the checkpoint's identity still decides, and the
    # resumed run writes config.json again
    saved = read_run_file(paths.config, cfg.out_dir, required=False) if os.path.exists(paths.config) else None
    if saved is not None and saved.get("identity") != cfg.identity:
        raise UserError(f"{cfg.out_dir} holds a different run ({how_it_differs(cfg, saved)}); pick another "
                        f"--out_dir, or delete {cfg.out_dir} to train this one there")
    ckpt = load_checkpoint(paths.ckpt, mmap=True) if os.path.exists(paths.ckpt) else None
    if ckpt is not None and ckpt.get("identity") != cfg.identity:
        raise UserError(f"{paths.ckpt} belongs to another run (its identity differs); delete "
                        f"{cfg.out_dir} to train this one there, or pick another --out_dir")
    if not os.path.exists(paths.done):
        return False
    done = read_run_file(paths.done, cfg.out_dir, required=False)
    if saved is not None and done and done.get("steps") == total_steps == (ckpt or {}).get("step"):
        return True
    with contextlib.suppress(FileNotFoundError):    # not what it claims: finish the run instead
        os.remove(paths.done)                          # (every DDP rank decides this; one removes)
    return False


def how_it_differs(cfg, saved):
    """The first setting, or the code, or the data, in which a folder's run differs from this one."""
    theirs, ours = identity_config(saved.get("config", {})), identity_config(vars(cfg))
    changed = sorted(k for k in set(theirs) | set(ours) if theirs.get(k) != ours.get(k))
    if changed:
        return f"{changed[0]}: {theirs.get(changed[0])!r} there, {ours.get(changed[0])!r} now"
    code = saved.get("code", {}).get("modules", {})
    edited = sorted(m for m, h in TRAINING_CODE_NOW["modules"].items() if code.get(m) != h)
    return (f"made by other code ({', '.join(edited)} changed since)" if edited
            else f"trained on a different build of {cfg.data_dir}")


def clear_leftovers(out_dir):
    """With the folder's lock held nobody else writes here: remove the temp files of a killed
    process, and an evaluation of the run before it was finished (it is evaluated again after)."""
    for name in os.listdir(out_dir) if os.path.isdir(out_dir) else []:
        if name.startswith(".tmp-") or name in ("eval.json", "eval.npz"):
            os.remove(os.path.join(out_dir, name))


def resolve_runtime(cfg, device):
    """How this process runs the model: the "auto" switches resolved for the device, once."""
    dtype = resolve_dtype(cfg.dtype, device)
    return SimpleNamespace(compiled=resolve_switch(cfg.compile, device, "compile"), dtype=dtype,
                           fused_adamw=resolve_switch(cfg.fused_adamw, device, "fused_adamw"),
                           data_on_device=resolve_switch(cfg.gpu_resident, device, "gpu_resident"),
                           loss_impl=resolve_loss_impl(cfg.loss_impl))


def build_model(job, runtime, vocab_size):
    """The model and optimizer, restored from the run's checkpoint when it has one (check_folder
    has checked that the checkpoint is this run's), and the training state (step, tokens seen)."""
    cfg, device = job.cfg, job.place.device
    raw = GPT(GPTConfig.from_run(vars(cfg), vocab_size)).to(device)
    raw.loss_impl = runtime.loss_impl
    optimizer = raw.configure_optimizer(cfg.weight_decay, cfg.learning_rate, (cfg.beta1, cfg.beta2),
                                        fused=runtime.fused_adamw)
    state = SimpleNamespace(step=0, tokens_seen=np.zeros(len(job.share.components), dtype=np.int64))
    if os.path.exists(job.paths.ckpt):
        ckpt = load_checkpoint(job.paths.ckpt)
        raw.load_state_dict(ckpt["model"])
        if "optimizer" in ckpt:                      # a finished run may have dropped it (keep_optimizer)
            optimizer.load_state_dict(ckpt["optimizer"])
        elif ckpt["step"] < job.total_steps:
            raise UserError(f"{job.paths.ckpt} has no optimizer state to resume from; delete {cfg.out_dir} "
                            f"to train this run again")
        state.step, state.tokens_seen = ckpt["step"], np.array(ckpt["tokens_seen"], dtype=np.int64)
        torch.set_rng_state(ckpt["rng_cpu"])
        if device.type == "cuda" and ckpt.get("rng_cuda") is not None:
            torch.cuda.set_rng_state(ckpt["rng_cuda"], device)
    net = torch.compile(raw) if runtime.compiled else raw
    if job.place.world > 1:
        net = torch.nn.parallel.DistributedDataParallel(
            net, device_ids=[device.index] if device.type == "cuda" else None)
    return Model(raw, net, optimizer, autocast_for(device, runtime.dtype)), state


def write_run_config(job, runtime, dataset, model, mixture, plan, step):
    """config.json (the folder explains itself) and the log cut back to the checkpoint's step."""
    cfg, share = job.cfg, job.share
    config = {k: v for k, v in vars(cfg).items() if k != "identity"}      # what identity hashes
    write_json(job.paths.config, {
        "identity": cfg.identity,
        "experiment": experiment_identity(config, dataset.fingerprint, dataset.default_order,
                                          TRAINING_CODE_NOW["fingerprint"]),
        "config": config,
        "code": TRAINING_CODE_NOW,           # what made the numbers, per module (runs.code_fingerprint)
        "model": {"n_params": model.n_params(), "size": size_label(vars(cfg)),
                  "flops_per_token": model.flops_per_token()},
        "trained_on": {"components": share.components, "weights": share.weights,
                       "tokens": dict(zip(share.components, share.quotas)),
                       "docs": dict(zip(share.components, mixture.n_docs))},
        "schedule": {"epochs": share.epochs, "steps_per_epoch": plan.steps_per_epoch,
                     "steps": job.total_steps, "rows_per_step": plan.rows},
        "dataset": {"name": dataset.name, "source": dataset.source, "dir": cfg.data_dir,
                    "fingerprint": dataset.fingerprint, "default_order": dataset.default_order,
                    "default_budget": dataset.n_tokens(dataset.default_order[0], "train")},
        "runtime": {"device": str(job.place.device), "world_size": job.place.world, **vars(runtime)},
        "provenance": provenance()})
    kept = [r for r in read_log(job.paths.log) if r["step"] <= step]    # the resumed run rewrites the rest
    with atomic_path(job.paths.log) as tmp, open(tmp, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in kept)


def save_checkpoint(job, model, state):
    device = job.place.device
    # a finished run never resumes: keep_optimizer=False stores its last checkpoint without AdamW's moments
    keep_optimizer = job.cfg.keep_optimizer or state.step < job.total_steps
    ckpt = {"identity": job.cfg.identity, "model": model.raw.state_dict(),
            **({"optimizer": model.optimizer.state_dict()} if keep_optimizer else {}),
            "step": state.step, "tokens_seen": state.tokens_seen.tolist(), "rng_cpu": torch.get_rng_state(),
            "rng_cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None}
    kept = "its previous checkpoint is kept" if os.path.exists(job.paths.ckpt) else "no checkpoint was kept"
    with full_disk_is_one_line(f"could not write {job.paths.ckpt} (no space left on the device?); {kept}: free "
                               f"some space and run the same command to resume"):
        with atomic_path(job.paths.ckpt) as tmp:
            torch.save(ckpt, tmp)


# -----------------------------------------------------------------------------
# the loop and what it writes

def validation_windows(dataset, names, n):
    """Fixed validation windows of each trained component (val split), the same every time."""
    windows = {}
    for name in names:
        starts, _ = fixed_windows(dataset, name, "val", n, seed=0)
        windows[name] = gather_windows(dataset.tokens(name, "val"), starts)
    return windows


def announce(job, runtime, model, mixture, resume, log):
    cfg = job.cfg
    arm = {"control": "steps-matched control", "exposure": "exposure-matched control"}.get(cfg.arm)
    what = (f"{arm} of K={cfg.k} ({cfg.components[0]}'s share of the {cfg.k}-mixture)" if arm else
            f"K={cfg.k} ({', '.join(cfg.components)})" + (", told each window's component" if cfg.arm == "tagged"
                                                           else ""))
    quotas = ", ".join(f"{q:,}" for q in job.share.quotas)
    log(f"{cfg.run_name}: {what}, {mixture.budget:,} tokens ({quotas}), "
        f"{job.share.epochs} epochs = {job.total_steps:,} steps of ~{cfg.batch_size} windows; model "
        f"{size_label(vars(cfg))} with {model.raw.n_params() / 1e6:.2f}M params; {job.place.device} "
        f"({'compiled' if runtime.compiled else 'eager'}, {runtime.dtype}"
        f"{', fused AdamW' if runtime.fused_adamw else ''}"
        f"{'' if runtime.loss_impl == 'full' else f', {runtime.loss_impl} output layer'}); data "
        f"{'on device' if runtime.data_on_device else 'gathered on host'}")
    if resume:
        log(f"resuming {cfg.out_dir} from step {resume:,}/{job.total_steps:,}")


class RunLog:
    """log.jsonl (one JSON object per line, flushed), the console, and wandb when asked (rank 0)."""

    def __init__(self, job, log):
        self.file, self.wandb, self.log = None, None, log
        if job.place.rank != 0:
            return
        self.file = open(job.paths.log, "a")
        if job.cfg.wandb_log:
            import wandb
            wandb.init(project=job.cfg.wandb_project, name=job.cfg.wandb_run_name or job.cfg.run_name,
                       config=vars(job.cfg), resume="allow")
            self.wandb = wandb

    def write(self, record, line):
        if self.file is None:
            return
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()
        self.log(line)
        if self.wandb:
            numbers = {k: v for k, v in record.items() if isinstance(v, (int, float))}
            self.wandb.log(numbers, step=record["step"])

    def close(self, finished):
        if self.file:
            self.file.close()
        if self.wandb and finished:
            self.wandb.finish()


def progress(job, model, state, meter, times, epoch, loss, lr):
    """A step's log record and line: loss, lr, tokens/s, MFU, the data path's share, ETA."""
    now, device = time.time(), job.place.device
    tok_per_s = meter.tokens / max(now - meter.since, 1e-9)
    peak = device_peak_flops(device, job.cfg.peak_flops)
    mfu = model.raw.flops_per_token() * tok_per_s / (peak * job.place.world) if peak else 0.0
    eta = (now - meter.start) / max(state.step - meter.first_step, 1) * (job.total_steps - state.step)
    step_ms, data_ms = times
    memory = ({"peak_mem_gb": round(torch.cuda.max_memory_allocated(device) / 1e9, 3)}
              if device.type == "cuda" else {})
    meter.tokens, meter.since = 0, now
    record = {"kind": "train", "step": state.step, "epoch": epoch, "loss": round(loss, 6), "lr": lr,
              "tokens": int(state.tokens_seen.sum()), "tok_per_s": round(tok_per_s), "mfu": round(mfu, 4),
              "step_ms": round(step_ms, 3), "data_ms": round(data_ms, 3),
              "elapsed": round(now - meter.start, 2), **memory}
    line = (f"step {state.step:>6}/{job.total_steps} | epoch {epoch + 1}/{job.share.epochs} | "
            f"loss {loss:.4f} | lr {lr:.2e} | {tok_per_s:,.0f} tok/s | MFU {100 * mfu:.1f}% | data "
            f"{100 * data_ms / max(step_ms, 1e-9):.1f}% | ETA {duration(eta)}"
            + (f" | {memory['peak_mem_gb']:.1f} GB" if memory else ""))
    return record, line


def validate(job, model, state, windows):
    val = validation_loss(model.raw, windows, job.place.device, model.autocast)
    mean = float(np.mean(list(val.values())))
    record = {"kind": "val", "step": state.step, "tokens": int(state.tokens_seen.sum()),
              "val_loss": round(mean, 6), "val_loss_per_component": {k: round(v, 6) for k, v in val.items()}}
    parts = ", ".join(f"{k} {v:.3f}" for k, v in val.items())
    return record, f"step {state.step:>6}: val loss {mean:.4f} ({parts})"


def checked_loss(job, model, state, loss, lr, check_weights):
    """The step's loss as a number (this syncs the GPU, so only when it is logged or saved); a
    diverged run stops here, before a checkpoint could keep its NaN weights."""
    value = loss.item() / job.place.world
    if job.place.world > 1:
        reduced = torch.tensor([value], device=job.place.device)
        torch.distributed.all_reduce(reduced)
        value = reduced.item()
    finite = math.isfinite(value) and (not check_weights or all(
        bool(torch.isfinite(p).all()) for p in model.raw.parameters()))
    if not finite:
        kept = (f"its last good checkpoint ({job.paths.ckpt}) is kept" if os.path.exists(job.paths.ckpt)
                else "no checkpoint had been saved yet")
        raise UserError(f"training diverged at step {state.step} (loss {value}, lr {lr:.2e}): the run "
                        f"stopped and {kept}; lower --learning_rate or raise --warmup_iters and rerun")
    return value


def stop_requested(job, stop, step):
    """SIGINT/SIGTERM arrived; under DDP every rank agrees, at log steps only, to sync rarely."""
    if job.place.world == 1:
        return stop["signal"] is not None
    if step % job.cfg.log_interval:
        return False
    flag = torch.tensor([float(stop["signal"] is not None)], device=job.place.device)
    torch.distributed.all_reduce(flag)
    return flag.item() > 0


def train_loop(job, model, state, batches, val_windows, log):
    """Steps from the current one to the last: batches(step) gives a step's (x, y) and its counts.
    SIGINT/SIGTERM finish the step, save a checkpoint and exit; the same command resumes there."""
    cfg = job.cfg
    stop = {"signal": None}
    handlers = {s: signal.signal(s, lambda signum, frame: stop.update(signal=signum))
                for s in (signal.SIGINT, signal.SIGTERM)}
    clock, logs = StepClock(job.place.device), RunLog(job, log)
    meter = SimpleNamespace(tokens=0, since=time.time(), start=time.time(), first_step=state.step)
    model.net.train()
    try:
        while state.step < job.total_steps:
            t_begin = clock.mark()
            x, y, tags, n_targets, comp, epoch = batches(state.step)
            t_data = clock.mark()
            lr = learning_rate_at(state.step, cfg, job.total_steps)
            for group in model.optimizer.param_groups:
                group["lr"] = lr
            # the step's mean over all its targets, across ranks (DDP averages gradients)
            total_targets = int(n_targets.sum())
            loss = train_step(model.net, model.optimizer, x, y, model.autocast, job.place.world / total_targets,
                              cfg.grad_clip, tags)
            t_end = clock.mark()
            state.step += 1
            np.add.at(state.tokens_seen, comp[comp >= 0], n_targets[comp >= 0])
            meter.tokens += total_targets
            stopping = stop_requested(job, stop, state.step)
            last = state.step == job.total_steps
            checkpoint_now = state.step % cfg.ckpt_interval == 0 or last or stopping
            logging_now = state.step % cfg.log_interval == 0 or last
            if logging_now or checkpoint_now:
                value = checked_loss(job, model, state, loss, lr, check_weights=checkpoint_now)
            if logging_now:
                times = clock.ms(t_begin, t_end), clock.ms(t_begin, t_data)
                logs.write(*progress(job, model, state, meter, times, epoch, value, lr))
            if state.step % cfg.eval_interval == 0 or last:
                logs.write(*validate(job, model, state, val_windows))
            if checkpoint_now and job.place.rank == 0:
                save_checkpoint(job, model, state)
            if stopping:
                log(f"stopped by signal at step {state.step:,}; checkpoint saved; run the same command to resume")
                raise SystemExit(130 if stop["signal"] == signal.SIGINT else 143)
    finally:
        for s, handler in handlers.items():
            signal.signal(s, handler)
        logs.close(finished=state.step == job.total_steps)


def finish(job, state, log):
    """The done marker, written last: what the run trained on, checked against the plan."""
    val = [r for r in read_log(job.paths.log) if r["kind"] == "val"]
    summary = {"steps": state.step, "tokens": int(state.tokens_seen.sum()),
               "tokens_per_component": dict(zip(job.share.components, state.tokens_seen.tolist())),
               "final_val_loss": val[-1]["val_loss"] if val else None}
    write_json(job.paths.done, summary)
    val_loss = summary["final_val_loss"]
    log(f"done: {job.cfg.out_dir} ({summary['tokens']:,} tokens, val loss "
        f"{'n/a' if val_loss is None else f'{val_loss:.4f}'})")


# -----------------------------------------------------------------------------

def main(argv):
    cfg = read_config(argv)
    place = Place(*distributed_setup(cfg))
    train(cfg, place)
    if place.world > 1:
        # ranks leave together: tearing gloo down while rank 0 still wrote aborted 2 runs in 15
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


def train(cfg, place):
    """The run cfg names, from its data to its done marker; every rank returns the same way."""
    master = place.rank == 0
    log = print if master else (lambda *a, **k: None)
    dataset = Dataset(cfg.data_dir)
    paths, share = resolve(dataset, cfg)
    if cfg.print_run_dir:
        log(cfg.out_dir)
        return
    stop_with_sweep()
    lock = lock_folder(cfg.out_dir, "train.py") if master else None     # noqa: F841 (held)
    job = Job(cfg, paths, share, share.epochs * steps_per_epoch(sum(share.quotas), cfg.batch_size), place)
    if check_folder(cfg, paths, job.total_steps):
        log(f"{cfg.out_dir} is already finished; nothing to do (delete the folder to train it again)")
        return
    if master:
        clear_leftovers(cfg.out_dir)
    mixture = Mixture(dataset, share.components, share.quotas, cfg.seed)
    plan = StepPlan(mixture, cfg.batch_size, place.world)

    torch.manual_seed(cfg.seed)            # seeds for everything: CPU resumes are bit-identical
    if cfg.cpu_threads:
        torch.set_num_threads(cfg.cpu_threads)
    if place.device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    runtime = resolve_runtime(cfg, place.device)
    model, state = build_model(job, runtime, dataset.vocab_size)
    if master:
        write_run_config(job, runtime, dataset, model.raw, mixture, plan, state.step)
    source = WindowSource(mixture.tokens, place.device, runtime.data_on_device, tagged=model.raw.tag is not None)
    announce(job, runtime, model, mixture, state.step, log)
    train_loop(job, model, state, lambda step: source.step_batch(plan, cfg.seed, step, place.rank),
               validation_windows(dataset, share.components, cfg.val_windows), log)
    if master:
        finish(job, state, log)


if __name__ == "__main__":
    run_cli(main)
