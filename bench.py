"""
Benchmarks for the harness (never timed tests). Each comparison runs side by side in one
process on the same inputs; absolute numbers go in BENCHMARKS.md with the machine named.

    python bench.py                           # prepare, train and data, defaults for the device
    python bench.py --what=prepare            # or train, data, coverage
    python bench.py --what=train --sizes=tiny,small,medium --steps=100
    python bench.py --what=gpu                # every GPU check and benchmark, one command
    python bench.py --json=bench.json         # also append the results to a JSON file (a list)

prepare  builds a >= 100 MB corpus from the real sample (../shared/realtext, every copy after
         the first with each document's sentences shuffled) as local parquet files in the
         dataset's schema; times bare tiktoken (encode_ordinary_batch on the texts in memory)
         against prepare.py end to end; times prepare's two kinds of work apart (the pool's
         encoding, the main thread's reading and writing); estimates the full corpus per core count.
train    tokens/s, MFU and the data path's share of train.train_step per model size, beside
         nanoGPT's training loop on the same model and batch; optionally a profile of a step.
data     per-batch time of a nanoGPT-style loader against data.gather_windows and
         train.WindowSource, on the same windows.
gpu      tests/test_gpu.py (its numbers kept), then train for tiny/small/medium with a profile.
coverage the report's intervals against the truth, by simulation (stats.coverage_table).
estimate what an arXiv sweep would cost on this CPU (sweep.sh asks, without a GPU).

Timings are wall clock on a machine other processes may share: candidates are interleaved, the
best of repeats (or one long stretch of steps) is kept, and the load average is printed.
"""
import contextlib
import io
import json as _json
import math
import os
import platform
import re
import shutil
import tempfile
import time
from types import SimpleNamespace

import numpy as np

from configurator import UserError, config_defaults, configure, run_cli
from data import BLOCK, WINDOW, gather_windows
from runs import CONFIG_DIR, train_defaults, write_json

# -----------------------------------------------------------------------------
# config (module globals are the defaults; override with a config file or --key=value)
what = "all"                # "prepare", "train", "data", "all" (these three); "gpu": every GPU
                            # check and benchmark (tests/test_gpu.py, then train with a profile);
                            # "coverage": the intervals' coverage by simulation; "estimate": what
                            # a sweep would cost on this CPU
json = ""                   # also append this run's results to a JSON file
seed = 1337
work_dir = ""               # scratch folder (default: a temporary folder, removed at the end)
device = "auto"             # train benchmark: "auto", "cpu", "cuda"
# prepare
realtext = ""               # real sample in the dataset's schema (default ../shared/realtext)
corpus_mb = 100             # MB of text to build from it
tokenizer = "r50k_base"     # the same ranks as gpt2, available offline
threads = []                # bare-tokenizer thread counts (default 1 and all cores); prepare.py
                            # runs with the most
repeats = 2                 # interleaved runs of the bare tokenizer and the pipeline; best kept
full_corpus_tokens = 600_000_000    # the full arXiv corpus, for the estimate
# train
sizes = []                  # config names (tiny, small, medium) or "<L>L-<d>d-<h>h[-v<vocab>]"
                            # (default: CUDA tiny,small,medium; CPU 2L-64d-4h-v65,tiny)
batch_size = 0              # windows of 100 targets per step (0: 128 on CUDA as in the sweep, 16 on CPU)
warmup_steps = 0            # untimed steps first (0: 10 on CUDA, for compilation; 2 on CPU)
steps = 0                   # timed steps, median reported (0: 50 on CUDA, 10 on CPU)
compile = "auto"            # torch.compile: "auto" = on for CUDA, off for CPU, as in train.py
dtype = "auto"              # autocast: "auto" = bfloat16 on CUDA, float32 on CPU, as in train.py
train_tokens = 0            # token buffer the windows come from (0: 50M on CUDA, 4M on CPU)
profile = ""                # size whose step is profiled (kernels by device time); "" = none
sweep_runs = 27             # the GPU sweep's runs (5 K x 3 seeds + 4 controls x 3 seeds), for
sweep_tokens = 200_000_000  # ... its cost at size small: each run's training tokens (50M x 4 epochs)
# coverage: the intervals' coverage by simulation (stats.py's regimes)
replicates = 10000          # simulated experiments per coverage cell (Monte Carlo error ~0.002)
n_boot = 1000               # bootstrap draws of the baseline method
fits = False                # also the fitted laws' intervals (about 6 minutes on 2 cores)
fit_sweeps = 400            # simulated sweeps per regime for the fits (Monte Carlo error ~0.011)
n_rep = 300                 # refit replicates per source of chance, for the fits
# estimate (sweep.sh asks for it before an arXiv sweep on a machine without a GPU)
data_dir = "data/arxiv"     # its stats.json gives the budget (else ~50M tokens, the dataset card's)
ks = [1, 2, 3, 4, 5]
seeds = [1, 2, 3]
controls = True
cpu_flops = 5e10            # what 2-4 cores sustain on these models in float32, roughly
# data
data_tokens = 50_000_000    # random uint16 memmap (a temp file), about the real budget
data_batch = 64             # windows per batch
data_iters = 500            # batches per timing round
data_rounds = 5             # rounds (loaders interleaved); best and median round reported
# -----------------------------------------------------------------------------

def table(headers, rows):
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    return "\n".join(lines + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows])


def cpu_name():
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        info = dict(line.split(":", 1) for line in f.read().split("\n\n")[0].splitlines() if ":" in line)
        info = {k.strip(): v.strip() for k, v in info.items()}
        return (f"{info.get('model name', '?')} (family {info.get('cpu family', '?')}, "
                f"model {info.get('model', '?')})")
    return platform.processor() or platform.machine()


def timed(fn, *args):
    """(result, wall seconds, CPU seconds of this process over all its threads)."""
    c0, t0 = time.process_time(), time.perf_counter()
    result = fn(*args)
    return result, time.perf_counter() - t0, time.process_time() - c0


# -----------------------------------------------------------------------------
# prepare: bare tiktoken against prepare.py on the same >= 100 MB of text

def build_corpus(src, dst, target_mb, seed):
    """train/validation/test.parquet in the dataset's schema (text, ClassLabel label), the sample
    replicated to target_mb of text; every copy after the first shuffles each document's sentences.
    Returns (copies, all texts in split order)."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    rng = np.random.default_rng(seed)
    tables = {s: pq.read_table(os.path.join(src, f"{s}.parquet")) for s in ("train", "validation", "test")}
    size = sum(len(t.encode()) for tb in tables.values() for t in tb.column("text").to_pylist())
    copies = max(1, math.ceil(target_mb * 1e6 / size))
    os.makedirs(dst, exist_ok=True)
    texts = []
    for split, tb in tables.items():
        labels = tb.column("label").to_pylist()
        sentences = [re.split(r"(?<=[.!?]) ", t) for t in tb.column("text").to_pylist()]
        out = [" ".join(p if copy == 0 else [p[i] for i in rng.permutation(len(p))])
               for copy in range(copies) for p in sentences]
        pq.write_table(pa.table({"text": pa.array(out, pa.string()),
                                 "label": pa.array(labels * copies, tb.schema.field("label").type)},
                                schema=tb.schema),
                       os.path.join(dst, f"{split}.parquet"), row_group_size=256)
        texts += out
    return copies, texts


def reset_hf_cache(work):
    import datasets
    cache = os.path.join(work, "hf_cache")
    shutil.rmtree(cache, ignore_errors=True)
    datasets.config.HF_DATASETS_CACHE = cache


def prepare_stages(corpus, work, enc):
    """
    prepare.tokenize_arxiv's work split the way it runs: load_dataset first (parquet -> Arrow
    cache, serial), then the pool's work (encode_to_numpy + EOT + uint16 per document, timed
    here on one thread) overlapping the main thread's (reading documents from the dataset,
    writing their tokens). Each is timed alone, on prepare's own functions.
    """
    import prepare
    reset_hf_cache(work)
    (loaded, _), t_load, _ = timed(prepare.load_arxiv, SimpleNamespace(data_files=corpus))
    names = prepare.label_names(loaded["train"])
    docs, t_read, _ = timed(lambda: [
        (prepare.to_category(label, names), text) for hf_split in prepare.HF_SPLITS.values()
        for batch in loaded[hf_split].iter(batch_size=prepare.batch_docs)
        for text, label in zip(batch["text"], batch["label"])])
    encoded, t_encode, _ = timed(lambda: [prepare.encode_document(enc, text) for _, text in docs])

    def write():
        writers = {c: prepare.SplitWriter(os.path.join(work, "stages", c), "train") for c in names}
        for (c, _), tokens in zip(docs, encoded):
            writers[c].add(tokens)
        for w in writers.values():
            w.close()
    _, t_write, _ = timed(write)
    shutil.rmtree(os.path.join(work, "stages"))
    return {"load": t_load, "read": t_read, "encode": t_encode, "write": t_write}


def tokenizer_and_corpus(cfg, work):
    """tiktoken's encoding and a >= corpus_mb corpus in the dataset's schema, from the real sample."""
    import tiktoken
    src = cfg.realtext or os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "shared", "realtext")
    if not os.path.exists(os.path.join(src, "train.parquet")):
        raise UserError(f"no real sample in {src}; pass --realtext=<folder with train/validation/"
                        f"test .parquet in the ccdv/arxiv-classification schema>")
    try:
        enc = tiktoken.get_encoding(cfg.tokenizer)
    except Exception as e:
        raise UserError(f"tiktoken encoding '{cfg.tokenizer}' unavailable ({e}); set "
                        f"TIKTOKEN_CACHE_DIR to a cache holding it")
    corpus = os.path.join(work, "corpus")
    (copies, texts), t_build, _ = timed(build_corpus, src, corpus, cfg.corpus_mb, cfg.seed)
    mb = sum(len(t.encode()) for t in texts) / 1e6
    print(f"corpus: {len(texts):,} documents, {mb:.1f} MB of text ({copies} copies of {src}), "
          f"built in {t_build:.1f}s")
    return enc, corpus, texts, copies, mb


def time_prepare(cfg, work, enc, corpus, texts, threads):
    """
    Interleaved, per repeat: the bare tokenizer at the most threads, prepare.py with a cold
    datasets cache, the bare tokenizer at fewer threads (first repeat only), prepare.py warm.
    Other processes only ever slow a run down, so the fastest of each is kept (the first cold
    run also pays datasets' one-time imports). Returns ({key: [(wall, cpu)]}, tokens, out_dir).
    """
    import datasets
    import prepare
    datasets.disable_progress_bars()
    n = threads[-1]
    out_dir = os.path.join(work, "prepared")
    argv = [f"--data_files={corpus}", f"--tokenizer={cfg.tokenizer}", f"--data_dir={out_dir}",
            f"--num_proc={n}", "--force"]
    runs = {**{f"bare{t}": [] for t in threads}, "cold": [], "warm": []}

    def run(key):
        if key == "cold":
            reset_hf_cache(work)
        fn = ((lambda: enc.encode_ordinary_batch(texts, num_threads=int(key[4:])))
              if key.startswith("bare") else (lambda: prepare.main(argv)))
        with contextlib.redirect_stdout(io.StringIO()):
            result, wall, cpu = timed(fn)
        runs[key].append((wall, cpu))
        return result

    for r in range(cfg.repeats):
        n_tokens = sum(len(e) for e in run(f"bare{n}"))
        run("cold")
        for t in threads[:-1] if r == 0 else []:
            run(f"bare{t}")
        run("warm")
    return runs, n_tokens, out_dir


def print_prepare_table(runs, best, threads, n_tokens, mb, n_docs):
    n = threads[-1]
    base_wall, base_cpu = best[f"bare{n}"]
    rows = []
    for key, label in [*[(f"bare{t}", f"tiktoken encode_ordinary_batch, {t} thread{'s' * (t > 1)} (bare)")
                         for t in threads],
                       ("cold", f"prepare.py end to end, {n} threads, cold datasets cache"),
                       ("warm", f"prepare.py end to end, {n} threads, warm datasets cache")]:
        wall, cpu = best[key]
        vs_bare = key in ("cold", "warm")
        rows.append([label, f"{wall:.2f}", ", ".join(f"{w:.2f}" for w, _ in runs[key]),
                     f"{n_tokens / wall / 1e6:.2f}", f"{mb / wall:.1f}",
                     f"{100 * (wall / base_wall - 1):+.0f}%" if vs_bare else "", f"{cpu:.2f}",
                     f"{100 * (cpu / base_cpu - 1):+.0f}%" if vs_bare else ""])
    print(f"\n### prepare: {n_tokens:,} tokens, {mb:.1f} MB of text, {n_docs:,} documents; "
          f"best wall time of the runs listed; CPU s = CPU time of that run, all threads\n")
    print(table(["what", "seconds", "runs", "M tokens/s", "MB/s", "overhead vs bare", "CPU s",
                 "CPU overhead"], rows))


def full_corpus_estimate(cfg, st, best, threads, n_tokens):
    """
    Minutes for the full corpus per core count. With c cores prepare runs c encoding threads
    beside its main thread, so after the serial load it takes at least the longer of all its
    work over c cores and the main thread's share alone (the limit on many cores).
    """
    import prepare
    n, main_thread = threads[-1], st["read"] + st["write"]
    print(f"\nprepare.py's work timed apart; at {n} threads the model below gives "
          f"{max((st['encode'] + main_thread) / n, main_thread):.2f}s plus the load, against "
          f"{best['warm'][0]:.2f}s measured with a warm cache (the rest: prepare.main's fixed costs, "
          f"and the pool draining at the end of each split)\n")
    print(table(["stage", "runs on", "seconds"], [
        ["load_dataset (parquet -> Arrow cache, cold)", "main thread, before the rest", f"{st['load']:.2f}"],
        [f"read: ds.iter(batch_size={prepare.batch_docs}) -> (category, text)", "main thread",
         f"{st['read']:.2f}"],
        ["encode: encode_to_numpy + EOT + uint16", "pool (timed on 1 thread)", f"{st['encode']:.2f}"],
        ["write: SplitWriter.add", "main thread", f"{st['write']:.2f}"]]))
    scale = cfg.full_corpus_tokens / n_tokens
    one = best[f"bare{threads[0]}"][0] * threads[0]      # one-thread seconds of the bare tokenizer
    estimate = {c: (scale * one / c / 60,
                    scale * (st["load"] + max((st["encode"] + main_thread) / c, main_thread)) / 60)
                for c in (1, 2, 4, 8, 16, 32)}
    print(f"\nestimated minutes for the full corpus ({cfg.full_corpus_tokens / 1e6:.0f}M tokens, "
          f"download excluded); linear in cores, an upper bound on speed (memory bandwidth and "
          f"all-core clocks make real scaling sublinear); prepare.py modelled as above:\n")
    print(table(["cores", "bare encode_ordinary_batch (min)", "prepare.py modelled (min)"],
                [[c, f"{b:.1f}", f"{p:.1f}"] for c, (b, p) in estimate.items()]))
    return estimate


def bench_prepare(cfg, work):
    threads = sorted(set(cfg.threads or [1, os.cpu_count()]))
    enc, corpus, texts, copies, mb = tokenizer_and_corpus(cfg, work)
    runs, n_tokens, out_dir = time_prepare(cfg, work, enc, corpus, texts, threads)
    best = {k: min(v) for k, v in runs.items()}
    with open(os.path.join(out_dir, "meta.json")) as f:
        splits = [s for per in _json.load(f)["splits"].values() for s in per.values()]
    consistent = sum(s["tokens"] for s in splits) == n_tokens + sum(s["docs"] for s in splits)
    print_prepare_table(runs, best, threads, n_tokens, mb, len(texts))
    print(f"\nprepare.py wrote the bare tokens plus one EOT per document: "
          f"{'yes' if consistent else 'NO (WARNING)'}")
    st = prepare_stages(corpus, work, enc)
    estimate = full_corpus_estimate(cfg, st, best, threads, n_tokens)
    if len(threads) > 1:
        lo, hi = threads[0], threads[-1]
        print(f"\nmeasured bare scaling {lo} -> {hi} threads: "
              f"{best[f'bare{lo}'][0] / best[f'bare{hi}'][0]:.2f}x (linear: {hi / lo:.0f}x)")
    base_wall = best[f"bare{threads[-1]}"][0]
    return {"docs": len(texts), "mb_text": mb, "tokens": n_tokens, "copies": copies, "threads": threads[-1],
            "runs_wall_cpu": runs, "consistent": consistent, "stages": st,
            "overhead_cold": best["cold"][0] / base_wall - 1,
            "overhead_warm": best["warm"][0] / base_wall - 1,
            "full_corpus_minutes": {str(c): v for c, v in estimate.items()}}


# -----------------------------------------------------------------------------
# train: tokens/s, MFU, and the data path's share of a step

def size_config(name):
    """A size as a run config: a config file's name (tiny, small, medium: config/<name>.py, read
    by train.py's own configurator) or '<L>L-<d>d-<h>h[-v<vocab>]'. Returns (config, vocab)."""
    from model import GPTConfig
    gpt2_vocab = GPTConfig.vocab_size
    path = os.path.join(CONFIG_DIR, f"{name}.py")
    if os.path.isfile(path):
        return train_defaults([path]), gpt2_vocab
    m = re.fullmatch(r"(\d+)L-(\d+)d-(\d+)h(?:-v(\d+))?", name)
    if not m:
        raise UserError(f"size '{name}': use a config name (tiny, small, medium) or "
                        f"'<L>L-<d>d-<h>h[-v<vocab>]' (e.g. 2L-64d-4h-v65)")
    return (dict(train_defaults(), n_layer=int(m[1]), n_embd=int(m[2]), n_head=int(m[3])),
            int(m[4] or gpt2_vocab))


class Clock:
    """Wall time of a stretch of work queued on the device: synchronised at both ends, so the
    GPU's asynchronous queue is timed where it runs, with every step's overlap left intact."""

    def __init__(self, device):
        import torch
        self.sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def run(self, fn, n):
        self.sync()
        t0 = time.perf_counter()
        for i in range(n):
            fn(i)
        self.sync()
        return time.perf_counter() - t0


def nanogpt_step_fn(model, optimizer, path, batch, device, autocast, rng):
    """
    nanoGPT's training loop (train.py of karpathy/nanoGPT) on our model and batch: get_batch
    reopens the token memmap, stacks x and y from per-window slices on the host, pins and copies
    them; the next batch is fetched right after the forward pass, while the GPU works; mean
    loss, backward, clip, AdamW (fused on CUDA). Returns a step function for Clock.run.
    """
    import torch

    def get_batch():
        data = np.memmap(path, dtype=np.uint16, mode="r")
        ix = rng.integers(0, len(data) - WINDOW, size=batch)
        x = torch.stack([torch.from_numpy(data[i:i + BLOCK].astype(np.int64)) for i in ix])
        y = torch.stack([torch.from_numpy(data[i + 1:i + 1 + BLOCK].astype(np.int64)) for i in ix])
        if device.type == "cuda":
            return x.pin_memory().to(device, non_blocking=True), y.pin_memory().to(device, non_blocking=True)
        return x, y

    state = {"batch": get_batch()}

    def step(_):
        x, y = state["batch"]
        with autocast:
            loss = model(x, y).mean()
        state["batch"] = get_batch()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return step


def log_softmax_losses(logits, targets, ignore_index=-1):
    """model.token_losses as it was before the H200 profile (BENCHMARKS.md): F.cross_entropy,
    whose compiled backward keeps a float32 copy of the log-probabilities. For comparison only."""
    import torch.nn.functional as F
    logits = logits.float()
    return F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1),
                           ignore_index=ignore_index, reduction="none").view(targets.shape)


@contextlib.contextmanager
def loss_function(fn):
    """Compile the model with another per-token loss (a fresh compilation inside the block)."""
    import model
    saved = model.token_losses
    model.token_losses = fn or saved
    try:
        yield
    finally:
        model.token_losses = saved


def bench_one_size(name, cfg, device, n_tok, batch, warm, n_steps, work):
    """Our step (train.train_step on train.WindowSource) against nanoGPT's loop, same model."""
    import torch
    import train
    from model import autocast_for, resolve_dtype, resolve_switch
    from model import GPT, GPTConfig
    run_config, vocab = size_config(name)
    is_cuda = device.type == "cuda"
    autocast = autocast_for(device, resolve_dtype(cfg.dtype, device))
    torch.manual_seed(cfg.seed)
    raw = GPT(GPTConfig.from_run(run_config, vocab)).to(device)
    optimizer = raw.configure_optimizer(0.1, 1e-3, (0.9, 0.95), fused=resolve_switch("auto", device))
    compiled = resolve_switch(cfg.compile, device)
    model = torch.compile(raw) if compiled else raw
    rng = np.random.default_rng(cfg.seed)
    tokens = rng.integers(0, vocab - 1, size=n_tok, dtype=np.uint16)
    path = os.path.join(work, f"tokens_{name}.bin")
    tokens.tofile(path)
    source = train.WindowSource(tokens, device, on_device=is_cuda)
    full = np.full(batch, BLOCK)
    plans = [rng.integers(0, n_tok - WINDOW, size=batch) for _ in range(warm + n_steps)]
    losses = []

    def ours(i):                              # train.py's loop body, without DDP and logging
        x, y = source.batch(plans[i], full)
        losses.append(train.train_step(model, optimizer, x, y, autocast, 1.0 / (batch * BLOCK), 1.0))

    clock = Clock(device)
    t_warm = clock.run(ours, warm)            # compilation happens here
    s_ours = clock.run(lambda i: ours(warm + i), n_steps)
    kernels = profile_steps(lambda i: ours(warm + i % n_steps), device) if name == cfg.profile else None
    if not math.isfinite(float(losses[-1])):
        raise RuntimeError(f"size {name}: loss {float(losses[-1])} during the benchmark")
    s_data = clock.run(lambda i: source.batch(plans[warm + i], full), n_steps)
    nano = nanogpt_step_fn(model, optimizer, path, batch, device, autocast, rng)
    clock.run(nano, 2)
    s_nano = clock.run(nano, n_steps)
    peak_mem = torch.cuda.max_memory_allocated(device) / 1e9 if is_cuda else None
    flops = raw.flops_per_token()
    peak = train.device_peak_flops(device, 0.0)
    tok = batch * BLOCK * n_steps
    return {"size": f"{name} ({run_config['n_layer']}L-{run_config['n_embd']}d-{run_config['n_head']}h, "
                    f"vocab {vocab})",
            "n_params": raw.n_params(), "batch": batch, "compiled": compiled, "warmup_s": t_warm,
            "step_ms": 1e3 * s_ours / n_steps, "tokens_per_s": tok / s_ours,
            "mfu": flops * tok / s_ours / peak if peak else float("nan"),
            "data_ms": 1e3 * s_data / n_steps, "nanogpt_step_ms": 1e3 * s_nano / n_steps,
            "nanogpt_tokens_per_s": tok / s_nano, "speedup_vs_nanogpt": s_nano / s_ours,
            "peak_mem_gb": peak_mem, "profile": kernels}


def profile_steps(step, device, n=5):
    """The operators of a few steps by their own device time: where an optimisation would pay."""
    import torch
    from torch.profiler import ProfilerActivity, profile
    cuda = device.type == "cuda"
    with profile(activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])) as prof:
        for i in range(n):
            step(i)
        if cuda:
            torch.cuda.synchronize()
    averages = prof.key_averages()
    for key in (["self_device_time_total", "self_cuda_time_total"] if cuda else ["self_cpu_time_total"]):
        try:
            return averages.table(sort_by=key, row_limit=25, max_name_column_width=70)
        except Exception:                 # the key's name changed across torch versions
            continue
    return averages.table(row_limit=25)


def bench_train(cfg, work):
    import torch
    import train
    from model import resolve_device
    device = resolve_device(cfg.device)
    is_cuda = device.type == "cuda"
    sizes = list(cfg.sizes) or (["tiny", "small", "medium"] if is_cuda else ["2L-64d-4h-v65", "tiny"])
    batch = cfg.batch_size or (128 if is_cuda else 16)
    warm = cfg.warmup_steps or (10 if is_cuda else 2)
    n_steps = cfg.steps or (50 if is_cuda else 10)
    n_tok = cfg.train_tokens or (50_000_000 if is_cuda else 4_000_000)
    if is_cuda:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    peak = train.device_peak_flops(device, 0.0)
    results = []
    # the profiled size again with the old cross entropy: the optimisation, measured side by side
    variants = [(name, None) for name in sizes] + [(cfg.profile, log_softmax_losses)] * bool(cfg.profile)
    for name, losses in variants:
        with loss_function(losses):
            results.append(bench_one_size(name, cfg, device, n_tok, batch, warm, n_steps, work))
        if losses:
            results[-1]["size"] += ", log_softmax cross entropy (before)"
            results[-1]["profile"] = None
        torch._dynamo.reset()
        if is_cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
    from model import resolve_dtype, resolve_switch
    mode = (f"{'CUDA' if is_cuda else f'CPU ({torch.get_num_threads()} threads)'}, "
            f"{resolve_dtype(cfg.dtype, device)} autocast, "
            f"{'torch.compile' if resolve_switch(cfg.compile, device) else 'eager'}, "
            f"{'fused AdamW, tokens on the GPU' if is_cuda else 'host gather'}")
    print(f"\n### train: {mode}; {warm} warmup + {n_steps} timed steps of {batch} windows x {BLOCK} "
          f"targets, timed as one stretch (synchronised at both ends); MFU against "
          f"{peak / 1e12:.2f} TFLOP/s\n")
    print(table(["size", "params (M)", "batch", "ms/step", "tokens/s", "MFU", "data ms/step",
                 "data share", "nanoGPT loop ms/step", "vs nanoGPT loop", "peak GB", "warmup s"],
                [[r["size"], f"{r['n_params'] / 1e6:.2f}", r["batch"], f"{r['step_ms']:.2f}",
                  f"{r['tokens_per_s']:,.0f}", f"{100 * r['mfu']:.1f}%", f"{r['data_ms']:.3f}",
                  f"{100 * r['data_ms'] / r['step_ms']:.2f}%", f"{r['nanogpt_step_ms']:.2f}",
                  f"{r['speedup_vs_nanogpt']:.2f}x",
                  "" if r["peak_mem_gb"] is None else f"{r['peak_mem_gb']:.1f}", f"{r['warmup_s']:.0f}"]
                 for r in results]))
    for r in results:
        if r["profile"]:
            print(f"\nprofile of {r['size']}, {5} steps of train.train_step:\n\n```\n{r['profile']}\n```")
    small = [r for r in results if r["size"].startswith("small")]
    if small and is_cuda:
        hours = cfg.sweep_runs * cfg.sweep_tokens / small[0]["tokens_per_s"] / 3600
        print(f"\nthe GPU sweep at size small: {cfg.sweep_runs} runs x {cfg.sweep_tokens / 1e6:.0f}M "
              f"training tokens at {small[0]['tokens_per_s']:,.0f} tokens/s = {60 * hours:.0f} min of "
              f"training, plus each run's compilation and evaluation")
    return {"device": str(device), "mode": mode, "peak_flops": peak, "steps": n_steps,
            "warmup_steps": warm, "sizes": results}


def bench_coverage(cfg, work):
    """How often each interval method covers the truth, per regime x seeds (stats.coverage_table)."""
    import stats
    began = time.perf_counter()
    rows = stats.coverage_table(replicates=cfg.replicates, n_boot=cfg.n_boot, seed=cfg.seed)
    print(f"\n### coverage of 95% intervals: {rows[0]['replicates']} simulated experiments per row, "
          f"{cfg.n_boot} bootstrap draws for the baseline; cells: coverage (mean width, nats); "
          f"{time.perf_counter() - began:.0f} s\n")
    print(stats.markdown_table(rows))
    result = {"coverage": rows}
    if cfg.fits:
        began = time.perf_counter()
        result["fits"] = stats.fit_coverage(n_seeds=3, replicates=cfg.fit_sweeps, n_rep=cfg.n_rep,
                                            seed=cfg.seed)
        print(f"\n### fitted laws: {result['fits'][0]['replicates']} simulated sweeps (K = 1..5, 3 seeds) "
              f"per regime, {cfg.n_rep} refit replicates per source; {time.perf_counter() - began:.0f} s\n")
        print(stats.fit_markdown_table(result["fits"]))
    return result


def bench_estimate(cfg):
    """The arXiv sweep's cost on this CPU, from the FLOPs of each size's runs (sweep.sh's grid)."""
    from model import GPT, GPTConfig
    from runs import read_json
    stats = os.path.join(cfg.data_dir, "stats.json")
    budget = read_json(stats)["default_budget"] if os.path.exists(stats) else 50_000_000
    n_runs = len(cfg.ks) * len(cfg.seeds) + bool(cfg.controls) * sum(k >= 2 for k in cfg.ks) * len(cfg.seeds)
    flops = 0.0
    for size in cfg.sizes or ["small"]:
        run_config, vocab = size_config(size)
        model = GPT(GPTConfig.from_run(run_config, vocab))
        flops += model.flops_per_token() * budget * run_config["epochs"] * n_runs
    total_runs = n_runs * len(cfg.sizes or ["small"])
    print(f"no GPU visible: the arXiv sweep ({total_runs} runs, {budget:,} tokens x "
          f"{run_config['epochs']} epochs each) would take about {flops / cfg.cpu_flops / 86400:.0f} days on "
          f"this CPU.\nRun `bash sweep.sh synthetic` for the CPU-sized experiment, or FORCE_CPU=1 bash "
          f"sweep.sh to insist.")


def bench_gpu(cfg, work):
    """
    Every GPU check and benchmark in one command, each part kept when a later one fails:
    tests/test_gpu.py (its numbers saved through GPU_TEST_REPORT), then the train benchmark for
    tiny, small and medium against nanoGPT's loop, with a profile of small's step.
    """
    import subprocess
    import sys
    here = os.path.dirname(os.path.abspath(__file__))
    numbers = os.path.join(work, "gpu_test_report.json")
    t0 = time.time()
    tests = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rA", "tests/test_gpu.py"], cwd=here,
                           env=dict(os.environ, GPU_TEST_REPORT=numbers), capture_output=True, text=True)
    print(f"\n### tests/test_gpu.py ({time.time() - t0:.0f}s, exit {tests.returncode})\n\n```\n"
          f"{tests.stdout[-6000:]}\n{tests.stderr[-2000:]}\n```")
    result = {"tests": {"returncode": tests.returncode, "seconds": time.time() - t0,
                        "summary": (tests.stdout.strip().splitlines() or [""])[-1]}}
    if os.path.exists(numbers):
        with open(numbers) as f:
            result["tests"]["numbers"] = _json.load(f)
        print(f"\nnumbers from the test run: {_json.dumps(result['tests']['numbers'])}")
    cfg.profile = cfg.profile or "small"
    try:
        result["train"] = bench_train(cfg, work)
    except Exception as e:                   # keep the test results when the benchmark fails
        result["train_error"] = f"{type(e).__name__}: {e}"
        print(f"\ntrain benchmark failed: {result['train_error']}")
    return result


# -----------------------------------------------------------------------------
# data: nanoGPT-style loader against ours on the same windows

def bench_data(cfg, work):
    import torch
    import train
    from model import GPTConfig
    path = os.path.join(work, "tokens.bin")
    rng = np.random.default_rng(cfg.seed)
    rng.integers(0, GPTConfig.vocab_size, size=cfg.data_tokens, dtype=np.uint16).tofile(path)
    mm = np.memmap(path, dtype=np.uint16, mode="r")
    cpu = torch.device("cpu")
    host = train.WindowSource(np.array(mm), cpu, on_device=False)   # train.py's in-memory buffer
    tensor = train.WindowSource(np.array(mm), cpu, on_device=True)
    full = np.full(cfg.data_batch, BLOCK)
    plans = [rng.integers(0, len(mm) - WINDOW, size=cfg.data_batch) for _ in range(cfg.data_iters)]

    def nanogpt(ix):                        # one stack of 101-token slices, memmap opened once
        batch = torch.stack([torch.from_numpy(mm[i:i + WINDOW].astype(np.int64)) for i in ix])
        return batch[:, :-1], batch[:, 1:]

    def nanogpt_as_written(ix):             # nanoGPT's get_batch: memmap reopened, two stacks
        data = np.memmap(path, dtype=np.uint16, mode="r")
        x = torch.stack([torch.from_numpy(data[i:i + BLOCK].astype(np.int64)) for i in ix])
        y = torch.stack([torch.from_numpy(data[i + 1:i + 1 + BLOCK].astype(np.int64)) for i in ix])
        return x, y

    loaders = {
        "nanoGPT-style: per-window memmap slices + torch.stack (baseline)": nanogpt,
        "nanoGPT get_batch as written (memmap reopened, x and y stacked apart)": nanogpt_as_written,
        "data.gather_windows on the memmap":
            lambda ix: tuple(map(torch.from_numpy, gather_windows(mm, ix, full))),
        "train.WindowSource, host gather (on_device=False; train.py on CPU)": lambda ix: host.batch(ix, full),
        "train.WindowSource, torch gather (on_device=True, CPU tensor)": lambda ix: tensor.batch(ix, full),
    }
    names = list(loaders)
    want = nanogpt(plans[0])
    for name, fn in loaders.items():
        if not all(torch.equal(a, b) for a, b in zip(fn(plans[0]), want)):
            raise RuntimeError(f"data benchmark: '{name}' gives different windows than the baseline")
    # rounds rotate the single-threaded loaders' order; the torch gather starts intra-op threads
    # that keep spinning afterwards, so it is timed apart, last
    times = {name: [] for name in names}
    for group in (names[:-1], names[-1:]):
        for r in range(cfg.data_rounds):
            for name in group[r % len(group):] + group[:r % len(group)]:
                t0 = time.perf_counter()
                for ix in plans:
                    loaders[name](ix)
                times[name].append((time.perf_counter() - t0) / len(plans))
    best = {k: float(np.min(v)) for k, v in times.items()}
    median = {k: float(np.median(v)) for k, v in times.items()}
    print(f"\n### data: {cfg.data_batch} windows of {WINDOW} tokens per batch from "
          f"{cfg.data_tokens / 1e6:.0f}M "
          f"uint16 tokens; {cfg.data_rounds} rounds x {cfg.data_iters} batches per loader; identical "
          f"outputs checked\n")
    print(table(["loader", "us/batch (best round)", "us/batch (median round)", "speedup (best)",
                 "speedup (median)"],
                [[k, f"{1e6 * best[k]:.1f}", f"{1e6 * median[k]:.1f}", f"{best[names[0]] / best[k]:.1f}x",
                  f"{median[names[0]] / median[k]:.1f}x"] for k in names]))
    return {"us_per_batch_best": {k: 1e6 * v for k, v in best.items()},
            "us_per_batch_median": {k: 1e6 * v for k, v in median.items()}}


# -----------------------------------------------------------------------------

def main(argv):
    cfg = SimpleNamespace(**configure(config_defaults(globals()), argv))
    if cfg.what == "estimate":
        return bench_estimate(cfg)
    whats = ["prepare", "train", "data"] if cfg.what == "all" else [cfg.what]
    if any(w not in ("prepare", "train", "data", "gpu", "coverage") for w in whats):
        raise UserError(f"what='{cfg.what}': use prepare, train, data, all, gpu, coverage or estimate")
    shared_tiktoken = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "shared", "tiktoken")
    if os.path.isdir(shared_tiktoken):      # offline tokenizer files, unless the user set a cache
        os.environ.setdefault("TIKTOKEN_CACHE_DIR", shared_tiktoken)
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    work = cfg.work_dir or tempfile.mkdtemp(prefix="bench-")
    os.makedirs(work, exist_ok=True)
    os.environ["HF_DATASETS_CACHE"] = os.path.join(work, "hf_cache")   # not ~/.cache
    import torch
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    record = {"date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "cpu": cpu_name(), "cores": os.cpu_count(),
              "gpu_name": gpu, "torch": torch.__version__, "python": platform.python_version(),
              "argv": list(argv), "config": vars(cfg), "loadavg": {"start": os.getloadavg()[0]}}
    print(f"# bench.py {record['date']}\nCPU: {record['cpu']}, {record['cores']} cores; torch "
          f"{torch.__version__} ({torch.get_num_threads()} threads); python {record['python']}\n"
          f"GPU: {gpu or 'none (CUDA not available)'}\n1-minute load average at start: "
          f"{record['loadavg']['start']:.2f} (other processes skew timings)")
    t_start = time.time()
    try:
        for w in whats:
            t0 = time.time()
            record[w] = {"prepare": bench_prepare, "train": bench_train,
                         "data": bench_data, "gpu": bench_gpu, "coverage": bench_coverage}[w](cfg, work)
            record["loadavg"][w] = os.getloadavg()[0]
            print(f"\n({w}: {time.time() - t0:.0f}s; 1-minute load average {record['loadavg'][w]:.2f} "
                  f"on {record['cores']} cores)")
            save_record(cfg.json, record, first=w == whats[0])   # each part kept as it finishes
    finally:
        if not cfg.work_dir:
            shutil.rmtree(work, ignore_errors=True)
    record["seconds"] = time.time() - t_start
    save_record(cfg.json, record, first=False)
    print(f"\ntotal {record['seconds']:.0f}s" + (f"; results appended to {cfg.json}" if cfg.json else ""))


def save_record(path, record, first):
    """Append this run's record to a JSON list (replacing the partial one it wrote before)."""
    if not path:
        return
    runs = []
    if os.path.exists(path):
        with open(path) as f:
            runs = _json.load(f)
        runs = runs if isinstance(runs, list) else [runs]
        if not first and runs:
            runs = runs[:-1]
    write_json(path, runs + [record])


if __name__ == "__main__":
    run_cli(main)
