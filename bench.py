"""
Benchmarks for the harness (never timed tests). Each comparison runs side by side in one
process on the same inputs; absolute numbers go in BENCHMARKS.md with the machine named.

    python bench.py                           # prepare, train and data, defaults for the device
    python bench.py --what=prepare            # or train, data, coverage
    python bench.py --what=train --sizes=tiny,small,medium --steps=100
    python bench.py --what=gpu                # every GPU check and benchmark, one command
    python bench.py --json_file=bench.json         # also append the results to a JSON file (a list)

prepare  builds a >= 100 MB corpus from the real sample (../shared/realtext, every copy after
         the first with each document's sentences shuffled) as local parquet files in the
         dataset's schema; times bare tiktoken (encode_ordinary_batch on the texts in memory)
         against prepare.py end to end; times prepare's two kinds of work apart (the pool's
         encoding, the main thread's reading and writing); estimates the full corpus per core count.
train    tokens/s, MFU and the data path's share of train.train_step per model size, beside
         nanoGPT's training loop on the same model and batch; optionally a profile of a step.
data     per-batch time of a nanoGPT-style loader against data.gather_windows and
         WindowSource, on the same windows.
gpu      train for tiny/small/medium (small also with every output layer and CUDA graphs, and a
         profile by kernel class), train.py's own loop against the bare step, runs side by side
         on one card, and the arXiv sweep's cost with every arm (tests/test_gpu.py: pytest).
coverage the report's intervals against the truth, by simulation (simulation.coverage_table).

Timings are wall clock on a machine other processes may share: candidates are interleaved, the
best of repeats (or one long stretch of steps) is kept, and the load average is printed.
"""
import json
import math
import os
import platform
import shutil
import tempfile
import time
from types import SimpleNamespace

import numpy as np

from configurator import UserError, config_defaults, configure, run_cli
from harness.benchkit import (Clock, card_worker, cpu_name, generated_dataset, nanogpt_get_batch, nanogpt_step_fn,
                              prepare_stages, profile_steps, table, time_prepare, tokenizer_and_corpus,
                              training_step)
from harness.cost import sweep_cost
from harness.data import BLOCK, WINDOW, gather_windows
from harness.mixture import WindowSource
from harness.runs import write_json

# -----------------------------------------------------------------------------
# config (module globals are the defaults; override with a config file or --key=value)
what = "all"                # "prepare", "train", "data", "all" (these three); "gpu": every GPU
                            # benchmark (train with a profile, train.py's loop, runs per card);
                            # "coverage": the intervals' coverage by simulation
json_file = ""              # also append this run's results to a JSON file
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
profile = ""                # size whose step is profiled (kernels by device time); "" = none;
loss_impls = []             # ... and timed again with these output layers (--what=gpu: all three)
compile_modes = []          # ... and with these torch.compile modes (--what=gpu: reduce-overhead)
# gpu: train.py's own loop, several runs per card, and what the whole sweep costs
loop_size = "small"         # train.py's own loop at this size (config/<size>.py) ...
loop_tokens = 20_000_000    # ... on this many generated tokens, one epoch
card_sizes = []             # runs side by side on one card: sizes (default tiny, small, medium) ...
card_runs = [1, 2, 3, 4]    # ... and how many at once
card_seconds = 6.0          # timed seconds per measurement (each run steps this long)
# coverage: the intervals' coverage by simulation (stats.py's regimes)
replicates = 10000          # simulated experiments per coverage cell (Monte Carlo error ~0.002)
n_boot = 1000               # bootstrap draws of the baseline method
fits = False                # also the fitted laws' intervals (about 6 minutes on 2 cores)
fit_sweeps = 400            # simulated sweeps per regime for the fits (Monte Carlo error ~0.011)
n_rep = 300                 # refit replicates per source of chance, for the fits
# data
data_tokens = 50_000_000    # random uint16 memmap (a temp file), about the real budget
data_batch = 64             # windows per batch
data_iters = 500            # batches per timing round
data_rounds = 5             # rounds (loaders interleaved); best and median round reported
# -----------------------------------------------------------------------------







# -----------------------------------------------------------------------------
# prepare: bare tiktoken against prepare.py on the same >= 100 MB of text











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
        splits = [s for per in json.load(f)["splits"].values() for s in per.values()]
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













def bench_one_size(name, cfg, device, n_tok, batch, warm, n_steps, work, loss_impl="auto", mode=None,
                   nanogpt=True):
    """Our step against nanoGPT's loop on the same compiled model; the output layer `loss_impl`
    (train.py's resolution of "auto" by default) and torch.compile's `mode` (None: train.py's)."""
    import torch
    from model import device_peak_flops
    t = training_step(name, cfg, device, n_tok, batch, loss_impl, mode)
    clock = Clock(device)
    t_warm = clock.run(t.step, warm)          # compilation happens here
    s_ours = clock.run(lambda i: t.step(warm + i), n_steps)
    kernels = profile_steps(lambda i: t.step(warm + i), device) if name == cfg.profile else None
    if not math.isfinite(float(t.losses[-1])):
        raise RuntimeError(f"size {name}: loss {float(t.losses[-1])} during the benchmark")
    s_data = clock.run(lambda i: t.source.batch(t.plans[i % len(t.plans)], t.full), n_steps)
    s_nano = float("nan")
    if nanogpt:
        path = os.path.join(work, f"tokens_{name}_{os.getpid()}.bin")     # nanoGPT reads a memmap
        t.tokens.tofile(path)
        nano = nanogpt_step_fn(t.model, t.optimizer, path, batch, device, t.autocast, t.rng)
        clock.run(nano, 2)
        s_nano = clock.run(nano, n_steps)
    peak_mem = torch.cuda.max_memory_allocated(device) / 1e9 if device.type == "cuda" else None
    peak, tok, rc = device_peak_flops(device, 0.0), batch * BLOCK * n_steps, t.run_config
    return {"size": f"{name} ({rc['n_layer']}L-{rc['n_embd']}d-{rc['n_head']}h, vocab {t.vocab})",
            "loss_impl": t.raw.loss_impl, "compile_mode": mode or "default",
            "n_params": t.raw.n_params(), "batch": batch, "compiled": t.compiled, "warmup_s": t_warm,
            "step_ms": 1e3 * s_ours / n_steps, "tokens_per_s": tok / s_ours,
            "mfu": t.raw.flops_per_token() * tok / s_ours / peak if peak else float("nan"),
            "data_ms": 1e3 * s_data / n_steps, "nanogpt_step_ms": 1e3 * s_nano / n_steps,
            "nanogpt_tokens_per_s": tok / s_nano, "speedup_vs_nanogpt": s_nano / s_ours,
            "peak_mem_gb": peak_mem, "profile": kernels}








def bench_train(cfg, work):
    import torch
    from model import device_peak_flops, resolve_device
    device = resolve_device(cfg.device)
    is_cuda = device.type == "cuda"
    sizes = list(cfg.sizes) or (["tiny", "small", "medium"] if is_cuda else ["2L-64d-4h-v65", "tiny"])
    batch = cfg.batch_size or (128 if is_cuda else 16)
    warm = cfg.warmup_steps or (10 if is_cuda else 2)
    n_steps = cfg.steps or (50 if is_cuda else 10)
    n_tok = cfg.train_tokens or (50_000_000 if is_cuda else 4_000_000)
    if is_cuda:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    peak = device_peak_flops(device, 0.0)
    results = []
    # the profiled size again with every other output layer, and with CUDA graphs: side by side
    variants = [(name, "auto", None) for name in sizes]
    if cfg.profile:
        from model import resolve_loss_impl
        default = resolve_loss_impl("auto")
        variants += [(cfg.profile, impl, None) for impl in cfg.loss_impls if impl != default]
        variants += [(cfg.profile, "auto", mode) for mode in cfg.compile_modes if mode != "default"]
    for name, impl, mode in variants:
        extra = impl != "auto" or mode is not None
        try:
            results.append(bench_one_size(name, cfg, device, n_tok, batch, warm, n_steps, work, impl, mode,
                                          nanogpt=not extra))
        except Exception as e:            # a variant that fails (a library missing) is named, not fatal
            print(f"size {name}, loss_impl {impl}, compile mode {mode}: failed: {type(e).__name__}: {e}")
            continue
        finally:
            torch._dynamo.reset()
            if is_cuda:
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats(device)
        if extra:
            label = f", {results[-1]['loss_impl']} output layer" + (f", mode {mode}" if mode else "")
            results[-1]["size"] += label
            results[-1]["profile"] = None
    from model import resolve_dtype, resolve_switch
    mode = (f"{'CUDA' if is_cuda else f'CPU ({torch.get_num_threads()} threads)'}, "
            f"{resolve_dtype(cfg.dtype, device)} autocast, "
            f"{'torch.compile' if resolve_switch(cfg.compile, device) else 'eager'}, "
            f"{'fused AdamW, tokens on the GPU' if is_cuda else 'host gather'}")
    print(f"\n### train: {mode}; {warm} warmup + {n_steps} timed steps of {batch} windows x {BLOCK} "
          f"targets, timed as one stretch (synchronised at both ends); MFU against "
          f"{peak / 1e12:.2f} TFLOP/s\n")
    print(table(["size", "output layer", "params (M)", "batch", "ms/step", "tokens/s", "MFU", "data ms/step",
                 "data share", "nanoGPT loop ms/step", "vs nanoGPT loop", "peak GB", "warmup s"],
                [[r["size"], r["loss_impl"], f"{r['n_params'] / 1e6:.2f}", r["batch"], f"{r['step_ms']:.2f}",
                  f"{r['tokens_per_s']:,.0f}", f"{100 * r['mfu']:.1f}%", f"{r['data_ms']:.3f}",
                  f"{100 * r['data_ms'] / r['step_ms']:.2f}%", f"{r['nanogpt_step_ms']:.2f}",
                  f"{r['speedup_vs_nanogpt']:.2f}x",
                  "" if r["peak_mem_gb"] is None else f"{r['peak_mem_gb']:.1f}", f"{r['warmup_s']:.0f}"]
                 for r in results]))
    for r in results:
        if r["profile"]:
            text, classes = r["profile"]
            r["profile"], r["kernel_classes_ms"] = text, classes
            print(f"\nprofile of {r['size']}, 5 steps of train.train_step:\n\n```\n{text}\n```")
            if classes:
                total = sum(classes.values())
                print(f"\ndevice time per step by kernel class ({total:.2f} ms in all):\n")
                print(table(["kernel class", "ms/step", "share"],
                            [[c, f"{ms:.3f}", f"{100 * ms / total:.1f}%"] for c, ms in classes.items()]))
    return {"device": str(device), "mode": mode, "peak_flops": peak, "steps": n_steps,
            "warmup_steps": warm, "sizes": results}


def bench_coverage(cfg, work):
    """How often each interval method covers the truth, per regime x seeds (simulation.coverage_table)."""
    from harness import simulation
    began = time.perf_counter()
    rows = simulation.coverage_table(replicates=cfg.replicates, n_boot=cfg.n_boot, seed=cfg.seed)
    print(f"\n### coverage of 95% intervals: {rows[0]['replicates']} simulated experiments per row, "
          f"{cfg.n_boot} bootstrap draws for the baseline; cells: coverage (mean width, nats); "
          f"{time.perf_counter() - began:.0f} s\n")
    print(simulation.markdown_table(rows))
    result = {"coverage": rows}
    if cfg.fits:
        began = time.perf_counter()
        result["fits"] = simulation.fit_coverage(n_seeds=3, replicates=cfg.fit_sweeps, n_rep=cfg.n_rep,
                                            seed=cfg.seed)
        print(f"\n### fitted laws: {result['fits'][0]['replicates']} simulated sweeps (K = 1..5, 3 seeds) "
              f"per regime, {cfg.n_rep} refit replicates per source; {time.perf_counter() - began:.0f} s\n")
        print(simulation.fit_markdown_table(result["fits"]))
    return result






def bench_loop(cfg, work):
    """
    train.py itself at size small, K = 2, one epoch of loop_tokens (about 1,500 steps), with the
    sweep's log, validation and checkpoint intervals: its own log's step rate in steady state
    (median over log intervals) and in all (every interval, with validation and checkpoints),
    and each run's fixed costs: the process start to its first step (imports, data, compilation)
    and evaluate.py's time at 200 and 1000 windows per component.
    """
    import subprocess
    import sys
    from harness.runs import read_log
    data = generated_dataset(os.path.join(work, "loop_data"), cfg.loop_tokens // 2, cfg.seed)
    out = os.path.join(work, "loop_run")
    cmd = [sys.executable, "train.py", f"config/{cfg.loop_size}.py", f"--data_dir={data}", "--k=2",
           f"--out_dir={out}", "--epochs=1", f"--batch_size={cfg.batch_size or 128}", "--log_interval=50",
           "--eval_interval=500", "--ckpt_interval=1000", f"--device={cfg.device}"]
    here = os.path.dirname(os.path.abspath(__file__))
    t0 = time.time()
    proc = subprocess.run(cmd, cwd=here, capture_output=True, text=True)
    wall = time.time() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"train.py failed: {proc.stderr[-2000:]}")
    records = [r for r in read_log(os.path.join(out, "log.jsonl")) if r["kind"] == "train"]
    steady = records[2:] or records           # past compilation and the first interval
    tok_per_s = float(np.median([r["tok_per_s"] for r in steady]))
    # every interval after the first (which holds the compilation), validation and checkpoints included
    first, last = records[0], records[-1]
    tok_per_s_all = (last["tokens"] - first["tokens"]) / (last["elapsed"] - first["elapsed"])
    loop_s = records[-1]["tokens"] / tok_per_s_all   # the loop's time at that rate, compilation apart
    result = {"tok_per_s_median": tok_per_s, "tok_per_s_all": tok_per_s_all, "loop_s": loop_s,
              "process_s": wall, "fixed_s": wall - loop_s, "steps": records[-1]["step"],
              "step_ms_median": float(np.median([r["step_ms"] for r in steady])),
              "data_share_median": float(np.median([r["data_ms"] / r["step_ms"] for r in steady])),
              "first_line": proc.stdout.splitlines()[0] if proc.stdout else ""}
    for n in (200, 1000):
        t0 = time.time()
        subprocess.run([sys.executable, "evaluate.py", out, f"--eval_windows={n}", "--force"], cwd=here,
                       check=True, capture_output=True, text=True)
        result[f"evaluate_s_{n}"] = time.time() - t0
    print(f"\n### train.py's own loop (size small, K = 2, {result['steps']} steps, log every 50, validation "
          f"every 500, checkpoint every 1000)\n\n{result['first_line']}\n")
    print(table(["tokens/s (median interval)", "tokens/s (all, with validation and checkpoints)",
                 "step ms (CUDA events, median)", "data share", "process s", "of it before/after the loop",
                 "evaluate.py s (200 / 1000 windows per component)"],
                [[f"{tok_per_s:,.0f}", f"{result['tok_per_s_all']:,.0f}", f"{result['step_ms_median']:.2f}",
                  f"{100 * result['data_share_median']:.2f}%", f"{wall:.0f}", f"{result['fixed_s']:.0f}",
                  f"{result['evaluate_s_200']:.1f} / {result['evaluate_s_1000']:.1f}"]]))
    return result




def bench_card(cfg, work):
    """Aggregate tokens/s of 1..4 runs side by side on one card, per size: separate processes (as
    sweep.sh starts them), all compiled first, then measured together for card_seconds."""
    import multiprocessing as mp
    ctx = mp.get_context("spawn")
    sizes, most = list(cfg.card_sizes) or ["tiny", "small", "medium"], max(cfg.card_runs)
    workers = {}
    for name in sizes:                        # every worker compiles at once: the card is idle then
        for i in range(most):
            mine, theirs = ctx.Pipe()
            proc = ctx.Process(target=card_worker, args=(name, cfg, theirs), daemon=True)
            proc.start()
            workers[name, i] = (proc, mine)
    memory = {key: conn.recv()[1] for key, (proc, conn) in workers.items()}
    results = []
    for name in sizes:
        for n in cfg.card_runs:
            for i in range(n):
                workers[name, i][1].send(cfg.card_seconds)
            answers = [workers[name, i][1].recv() for i in range(n)]
            rate = sum(steps * (cfg.batch_size or 128) * BLOCK / seconds for steps, seconds in answers)
            results.append({"size": name, "runs": n, "tokens_per_s": rate,
                            "peak_gb_per_run": max(memory[name, i] for i in range(n))})
    for proc, conn in workers.values():
        conn.send(None)
        proc.join(timeout=30)
    single = {r["size"]: r["tokens_per_s"] for r in results if r["runs"] == 1}
    print(f"\n### runs side by side on one card ({cfg.card_seconds:.0f} s each, train.train_step at batch 128)\n")
    print(table(["size", "runs", "aggregate tokens/s", "vs one run", "peak GB per run"],
                [[r["size"], r["runs"], f"{r['tokens_per_s']:,.0f}",
                  f"{r['tokens_per_s'] / single[r['size']]:.2f}x",
                  f"{r['peak_gb_per_run']:.1f}"] for r in results]))
    return results






def bench_gpu(cfg, work):
    """
    Every GPU measurement in one command, each part kept when a later one fails: the train
    benchmark (tiny, small, medium against nanoGPT's loop; small with every output layer and
    with CUDA graphs; a profile by kernel class), train.py's own loop, runs side by side on one
    card, and what the arXiv sweep with every arm costs from those numbers. The GPU's acceptance
    tests are pytest's: `python -m pytest -q tests/test_gpu.py`.
    """
    cfg.profile = cfg.profile or "small"
    cfg.loss_impls = list(cfg.loss_impls) or ["chunked", "cce"]      # beside "full", train.py's
    cfg.compile_modes = list(cfg.compile_modes) or ["reduce-overhead"]    # CUDA graphs
    result = {}
    for part, fn in (("train", bench_train), ("loop", bench_loop), ("card", bench_card)):
        t0 = time.time()
        try:
            result[part] = fn(cfg, work)
        except Exception as e:                # keep what finished when a part fails
            result[f"{part}_error"] = f"{type(e).__name__}: {e}"
            print(f"\n{part} benchmark failed: {result[f'{part}_error']}")
        print(f"({part}: {time.time() - t0:.0f}s)")
        if cfg.json_file:
            save_record(cfg.json_file + ".partial", result, first=part == "train")   # one record, grown
    if "loop" in result and "card" in result:
        result["sweep"] = print_sweep_cost(result["loop"], result["card"])
    return result


def print_sweep_cost(loop, card):
    """The sweep's wall time at each number of runs per card, from train.py's measured loop."""
    small = {r["runs"]: r["tokens_per_s"] for r in card if r["size"] == "small"}
    eval_s = loop["evaluate_s_1000"] + (loop["evaluate_s_1000"] - loop["evaluate_s_200"]) / 1600 * 9000
    rows, out = [], {}
    for runs, aggregate in small.items():
        # train.py's loop at this many runs per card: its own rate scaled by the card's gain
        per_slot = loop["tok_per_s_all"] * aggregate / small[1] / runs
        n_runs, equivalents, hours = sweep_cost(200_000_000, per_slot, runs, loop["fixed_s"], eval_s)
        out[runs] = hours
        rows.append([runs, n_runs, f"{equivalents:.2f}", f"{per_slot * runs:,.0f}", f"{60 * hours:.0f}"])
    print(f"\n### the default arXiv sweep with every arm, 3 seeds, size small (200M training tokens per "
          f"mixture run; per run {loop['fixed_s']:.0f} s of start and compilation and {eval_s:.0f} s of "
          f"evaluation over 11 categories x 1000 windows); prepare not included\n")
    print(table(["runs per card", "runs", "mixture-run equivalents", "train.py tokens/s (card)", "wall minutes"],
                rows))
    return out


# -----------------------------------------------------------------------------
# data: nanoGPT-style loader against ours on the same windows

def bench_data(cfg, work):
    import torch
    from model import GPTConfig
    path = os.path.join(work, "tokens.bin")
    rng = np.random.default_rng(cfg.seed)
    rng.integers(0, GPTConfig.vocab_size, size=cfg.data_tokens, dtype=np.uint16).tofile(path)
    mm = np.memmap(path, dtype=np.uint16, mode="r")
    cpu = torch.device("cpu")
    host = WindowSource(np.array(mm), cpu, on_device=False)   # train.py's in-memory buffer
    tensor = WindowSource(np.array(mm), cpu, on_device=True)
    full = np.full(cfg.data_batch, BLOCK)
    plans = [rng.integers(0, len(mm) - WINDOW, size=cfg.data_batch) for _ in range(cfg.data_iters)]

    def nanogpt(ix):                        # one stack of 101-token slices, memmap opened once
        batch = torch.stack([torch.from_numpy(mm[i:i + WINDOW].astype(np.int64)) for i in ix])
        return batch[:, :-1], batch[:, 1:]

    def nanogpt_as_written(ix):             # nanoGPT's get_batch: memmap reopened, two stacks
        return nanogpt_get_batch(path, ix, cpu)

    loaders = {
        "nanoGPT-style: per-window memmap slices + torch.stack (baseline)": nanogpt,
        "nanoGPT get_batch as written (memmap reopened, x and y stacked apart)": nanogpt_as_written,
        "data.gather_windows on the memmap":
            lambda ix: tuple(map(torch.from_numpy, gather_windows(mm, ix, full))),
        "WindowSource, host gather (on_device=False; train.py on CPU)": lambda ix: host.batch(ix, full),
        "WindowSource, torch gather (on_device=True, CPU tensor)": lambda ix: tensor.batch(ix, full),
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
    whats = ["prepare", "train", "data"] if cfg.what == "all" else [cfg.what]
    if any(w not in ("prepare", "train", "data", "gpu", "coverage") for w in whats):
        raise UserError(f"what='{cfg.what}': use prepare, train, data, all, gpu or coverage")
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
            save_record(cfg.json_file, record, first=w == whats[0])   # each part kept as it finishes
    finally:
        if not cfg.work_dir:
            shutil.rmtree(work, ignore_errors=True)
    record["seconds"] = time.time() - t_start
    save_record(cfg.json_file, record, first=False)
    saved = f"; results appended to {cfg.json_file}" if cfg.json_file else ""
    print(f"\ntotal {record['seconds']:.0f}s{saved}")


def save_record(path, record, first):
    """Append this run's record to a JSON list (replacing the partial one it wrote before)."""
    if not path:
        return
    runs = []
    if os.path.exists(path):
        with open(path) as f:
            runs = json.load(f)
        runs = runs if isinstance(runs, list) else [runs]
        if not first and runs:
            runs = runs[:-1]
    write_json(path, runs + [record])


if __name__ == "__main__":
    run_cli(main)
