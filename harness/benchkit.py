"""
The pieces bench.py's measurements are made of: tables and clocks, the training step ours and
nanoGPT's (and cut-cross-entropy, the field library the output layer was measured against), a
profile by kernel class, generated data, and the worker that one run on a shared card is.
bench.py says what each benchmark measures and runs them; nothing here is on a run's path.
"""
import contextlib
import io
import math
import os
import platform
import re
import shutil
import time
from types import SimpleNamespace

import numpy as np

from configurator import UserError
from harness.data import BLOCK, WINDOW
from harness.mixture import WindowSource
from harness.runs import ROOT, size_config


# -----------------------------------------------------------------------------
# reporting and timing

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


# -----------------------------------------------------------------------------
# the training step, ours and nanoGPT's, and where its device time goes

def training_step(name, cfg, device, n_tok, batch, loss_impl="auto", mode=None):
    """Model, optimizer and train.py's loop body (train.train_step on WindowSource batches)
    for a size, on random tokens (t.tokens). Returns a namespace with step(i) for Clock.run."""
    import torch
    import train
    from model import autocast_for, resolve_dtype, resolve_loss_impl, resolve_switch
    from model import GPT, GPTConfig
    run_config, vocab = size_config(name)
    dtype = resolve_dtype(cfg.dtype, device)
    t = SimpleNamespace(run_config=run_config, vocab=vocab, autocast=autocast_for(device, dtype), losses=[],
                        batch=batch)
    torch.manual_seed(cfg.seed)
    t.raw = GPT(GPTConfig.from_run(run_config, vocab)).to(device)
    t.raw.loss_impl = "cce" if loss_impl == "cce" and add_cce_output_layer() else resolve_loss_impl(loss_impl)
    t.optimizer = t.raw.configure_optimizer(0.1, 1e-3, (0.9, 0.95), fused=resolve_switch("auto", device))
    t.compiled = resolve_switch(cfg.compile, device)
    t.model = (torch.compile(t.raw, mode=mode) if mode else torch.compile(t.raw)) if t.compiled else t.raw
    t.rng = np.random.default_rng(cfg.seed)
    t.tokens = t.rng.integers(0, vocab - 1, size=n_tok, dtype=np.uint16)
    t.source = WindowSource(t.tokens, device, on_device=device.type == "cuda")
    t.full = np.full(batch, BLOCK)
    t.plans = [t.rng.integers(0, n_tok - WINDOW, size=batch) for _ in range(64)]

    def step(i):                              # train.py's loop body, without DDP and logging
        x, y = t.source.batch(t.plans[i % len(t.plans)], t.full)
        t.losses.append(train.train_step(t.model, t.optimizer, x, y, t.autocast, 1.0 / (batch * BLOCK), 1.0))
    t.step = step
    return t


def nanogpt_get_batch(path, ix, device):
    """nanoGPT's get_batch as written, for windows starting at ix: the token memmap reopened,
    x and y stacked from per-window slices on the host, pinned and copied non-blocking on CUDA."""
    import torch
    data = np.memmap(path, dtype=np.uint16, mode="r")
    x = torch.stack([torch.from_numpy(data[i:i + BLOCK].astype(np.int64)) for i in ix])
    y = torch.stack([torch.from_numpy(data[i + 1:i + 1 + BLOCK].astype(np.int64)) for i in ix])
    if device.type == "cuda":
        return x.pin_memory().to(device, non_blocking=True), y.pin_memory().to(device, non_blocking=True)
    return x, y


def nanogpt_step_fn(model, optimizer, path, batch, device, autocast, rng):
    """
    nanoGPT's training loop (train.py of karpathy/nanoGPT) on our model and batch: get_batch as
    above, the next batch fetched right after the forward pass, while the GPU works; mean loss,
    backward, clip, AdamW (fused on CUDA). Returns a step function for Clock.run.
    """
    import torch
    n_tokens = len(np.memmap(path, dtype=np.uint16, mode="r"))

    def get_batch():
        return nanogpt_get_batch(path, rng.integers(0, n_tokens - WINDOW, size=batch), device)

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


def add_cce_output_layer():
    """
    cut-cross-entropy (pip install cut-cross-entropy; CUDA, bf16), the field library measured
    against model.py's output layers, added to model.OUTPUT_LAYERS as "cce": its kernels as a
    custom operator with its own backward (opaque to torch.compile, so no graph break), without
    the library's per-step sync (its ignore_index path calls nonzero; here ignored rows get
    target 0 and a zero gradient), gradient filtering off. On the H200 it was twice as slow as
    the full logits and its gradients were off by up to 29% (bf16 accumulation): BENCHMARKS.md.
    """
    import torch
    import model
    if "cce" in model.OUTPUT_LAYERS:
        return True
    from cut_cross_entropy.cce_backward import cce_backward_kernel
    from cut_cross_entropy.cce_lse_forward import cce_lse_forward_kernel
    from cut_cross_entropy.indexed_dot import indexed_neg_dot_forward_kernel

    @torch.library.custom_op("ergodic_k::cce_losses", mutates_args=())
    def forward(h: torch.Tensor, w: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        lse = cce_lse_forward_kernel(h, w)
        return indexed_neg_dot_forward_kernel(h, w, targets, out_dtype=torch.float32) + lse, lse

    @forward.register_fake
    def _(h, w, targets):
        return h.new_empty(h.shape[0], dtype=torch.float32), h.new_empty(h.shape[0], dtype=torch.float32)

    @torch.library.custom_op("ergodic_k::cce_grads", mutates_args=())
    def grads(grad: torch.Tensor, h: torch.Tensor, w: torch.Tensor, lse: torch.Tensor,
              targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        w = w.detach().requires_grad_(True)        # the library returns dw only for such a w
        grad_h, grad_w = cce_backward_kernel(grad.contiguous(), h, w, lse, None, None, None, targets=targets)
        return grad_h, grad_w.to(w.dtype)

    @grads.register_fake
    def _(grad, h, w, lse, targets):
        return torch.empty_like(h), torch.empty_like(w)

    def setup_context(ctx, inputs, output):
        h, w, targets = inputs
        ctx.save_for_backward(h, w, targets, output[1])

    def backward(ctx, grad_losses, _grad_lse):
        h, w, targets, lse = ctx.saved_tensors
        grad_h, grad_w = grads(grad_losses, h, w, lse, targets)
        return grad_h, grad_w, None

    forward.register_autograd(backward, setup_context=setup_context)

    def cce(h, w, targets, ignore_index):
        keep = targets != ignore_index
        return forward(h.contiguous(), w, torch.where(keep, targets, 0))[0] * keep
    model.OUTPUT_LAYERS["cce"] = cce
    return True


KERNEL_CLASSES = [   # (class, substrings of kernel names), first match wins; by device self time
    ("output layer: cut-cross-entropy", ("_cce_", "indexed_neg_dot")),
    ("matrix products (cuBLAS/CUTLASS)", ("gemm", "nvjet", "xmma", "cutlass", "matmul", "_mm_")),
    ("attention (flash)", ("flash", "fmha", "attention")),
    ("AdamW and grad clipping", ("adam", "multi_tensor", "foreach", "norm_kernel")),
    ("fused elementwise/reductions (Triton, incl. the full output layer's cross entropy)", ("triton_",)),
    ("copies and fills", ("copy", "fill", "memcpy", "memset", "elementwise_kernel", "index")),
]


def kernel_classes(averages, n_steps):
    """Device time per step by kernel class (KERNEL_CLASSES), from profiler key averages."""
    totals = {}
    for event in averages:
        us = getattr(event, "self_device_time_total", None) or getattr(event, "self_cuda_time_total", 0)
        if not us or event.device_type.name != "CUDA":
            continue
        name = event.key.lower()
        label = next((c for c, keys in KERNEL_CLASSES if any(k in name for k in keys)), "other")
        totals[label] = totals.get(label, 0.0) + us / 1e3 / n_steps
    return dict(sorted(totals.items(), key=lambda kv: -kv[1]))


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
    classes = kernel_classes(averages, n) if cuda else {}
    for key in (["self_device_time_total", "self_cuda_time_total"] if cuda else ["self_cpu_time_total"]):
        try:
            return averages.table(sort_by=key, row_limit=25, max_name_column_width=70), classes
        except Exception:                 # the key's name changed across torch versions
            continue
    return averages.table(row_limit=25), classes


# -----------------------------------------------------------------------------
# data for the benchmarks: a generated GPT-2-vocabulary dataset, a corpus from the real sample

def generated_dataset(path, tokens_per_component, seed):
    """Two components of random GPT-2 tokens in documents of 20,000 (about an arXiv paper's
    length, so windows pad as much as on arXiv): train.py's real path without a tokenizer."""
    import prepare
    vocab, eot = 50257, 50256
    rng = np.random.default_rng(seed)

    def build(work):
        splits = {}
        for name in ("gen0", "gen1"):
            splits[name] = {}
            for split, n in zip(("train", "val", "test"), (tokens_per_component, 200_000, 200_000)):
                writer = prepare.SplitWriter(os.path.join(work, name), split)
                for _ in range(max(1, n // 20_000)):
                    writer.add(np.append(rng.integers(0, eot, size=19_999), eot))
                splits[name][split] = writer.close()
        return {"tokenizer": "generated", "vocab_size": vocab, "eot": eot, "components": ["gen0", "gen1"],
                "splits": splits, "origin": {"generated": "bench.py generated_dataset"}}
    prepare.build_dataset(path, build, "generated", seed)
    return path


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
    src = cfg.realtext or os.path.join(ROOT, "..", "shared", "realtext")
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

# -----------------------------------------------------------------------------
# one run on a shared card (bench.bench_card starts several)

def card_worker(name, cfg, conn):
    """One run of a size on the shared card: compiled and warmed up, then on each message steps
    for that many seconds and answers (steps, seconds)."""
    import torch
    from model import resolve_device
    device = resolve_device(cfg.device)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    t = training_step(name, cfg, device, 20_000_000, cfg.batch_size or 128)
    clock = Clock(device)
    clock.run(t.step, 10)
    cuda = device.type == "cuda"
    conn.send(("ready", torch.cuda.max_memory_allocated(device) / 1e9 if cuda else 0.0))
    while (seconds := conn.recv()) is not None:
        clock.sync()
        t0, n = time.perf_counter(), 0
        while time.perf_counter() - t0 < seconds:
            t.step(n)
            n += 1
        clock.sync()
        conn.send((n, time.perf_counter() - t0))

