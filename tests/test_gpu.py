"""
The CUDA path, accepted on a GPU in one command (skipped without CUDA):

    python -m pytest -q tests/test_gpu.py          # about 2-4 minutes on one H100

A real-vocabulary run of size small (GPT-2 tokens of ../shared/realtext when it can be tokenized
here, else a generated dataset with the same 50257-token vocabulary, so this never skips on a GPU
for want of data) through train.py itself with torch.compile, bf16 autocast, fused AdamW and the
tokens resident on the GPU: the loss falls; the log has tokens/s, MFU, peak memory and the data
path's share of a step (CUDA events); no graph breaks or recompilations; SIGTERM saves a
checkpoint and the same command resumes from it on the same windows; bf16 evaluation is within
0.02 nats of float32 evaluation; and with two GPUs visible, a 2-rank NCCL DDP run.

Set GPU_TEST_REPORT=<file.json> to keep the numbers it measures (BENCHMARKS.md quotes them).
"""
import json
import math
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from harness.data import BLOCK, Dataset
from model import GPT, GPTConfig
from conftest import REALTEXT, ROOT, TIKTOKEN_CACHE, make_real_vocab

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

BATCH = 128                 # the sweep's batch
STEPS = 300                 # about this many optimizer steps
COMPILE_LOGS = {"TORCH_LOGS": "recompiles,graph_breaks"}   # dynamo reports both on stderr
REPORT = {}


def report(**numbers):
    REPORT.update(numbers)
    path = os.environ.get("GPU_TEST_REPORT")
    if path:
        with open(path, "w") as f:
            json.dump(REPORT, f, indent=2)


def real_vocab_dataset(root):
    """GPT-2 tokens of the real sample when tiktoken's files and `datasets` are here, else generated."""
    try:
        import datasets  # noqa: F401
        have_tokenizer = os.path.isdir(TIKTOKEN_CACHE) and os.listdir(TIKTOKEN_CACHE)
    except ImportError:
        have_tokenizer = False
    if have_tokenizer and os.path.exists(os.path.join(REALTEXT, "train.parquet")):
        path = os.path.join(root, "realtext")
        env = dict(os.environ, TIKTOKEN_CACHE_DIR=TIKTOKEN_CACHE, HF_DATASETS_OFFLINE="1")
        subprocess.run([sys.executable, "prepare.py", f"--data_files={REALTEXT}",
                        "--tokenizer=r50k_base", f"--data_dir={path}"],
                       cwd=ROOT, env=env, check=True, capture_output=True)
        return path, "realtext (r50k_base)"
    return make_real_vocab(os.path.join(root, "generated")), "generated, 50257-token vocabulary"


def train_command(data_dir, out_dir, epochs, *extra):
    return [sys.executable, "train.py", "config/small.py", f"--data_dir={data_dir}", "--k=2",
            f"--out_dir={out_dir}", f"--batch_size={BATCH}", f"--epochs={epochs}", "--warmup_iters=30",
            "--log_interval=10", "--eval_interval=100", "--ckpt_interval=1000", "--val_windows=50", *extra]


def log_records(out_dir):
    with open(os.path.join(out_dir, "log.jsonl")) as f:
        return [json.loads(line) for line in f if line.strip()]


def wait_for_step(out_dir, step, proc, timeout=600):
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if os.path.exists(os.path.join(out_dir, "log.jsonl")) and \
                any(r["step"] >= step for r in log_records(out_dir)):
            return
        time.sleep(0.2)
    raise AssertionError(f"run did not reach step {step}: {proc.communicate()}")


@pytest.fixture(scope="module")
def gpu_run(tmp_path_factory):
    """One run of size small, stopped by SIGTERM halfway and resumed by the same command."""
    root = tmp_path_factory.mktemp("gpu")
    data_dir, data_kind = real_vocab_dataset(str(root))
    ds = Dataset(data_dir)
    steps_per_epoch = math.ceil(ds.n_tokens(ds.default_order[0], "train") / (BATCH * BLOCK))
    epochs = max(1, min(100, round(STEPS / steps_per_epoch)))
    out = str(root / "run")
    cmd = train_command(data_dir, out, epochs)
    env = dict(os.environ, **COMPILE_LOGS)
    t0 = time.time()
    first = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)
    wait_for_step(out, steps_per_epoch * epochs // 2, first)
    first.send_signal(signal.SIGTERM)
    out1, err1 = first.communicate(timeout=300)
    stopped_at = torch.load(os.path.join(out, "ckpt.pt"), map_location="cpu", weights_only=False)["step"]
    second = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    report(data=data_kind, epochs=epochs, wall_s_train=round(time.time() - t0, 1))
    return {"data_dir": data_dir, "out": out, "first": (first.returncode, out1, err1),
            "second": second, "stopped_at": stopped_at, "cmd": cmd}


def test_sigterm_saves_and_the_same_command_resumes(gpu_run):
    rc, stdout, stderr = gpu_run["first"]
    assert rc == 143, stderr[-3000:]
    second = gpu_run["second"]
    assert second.returncode == 0, second.stderr[-3000:]
    assert f"resuming {gpu_run['out']} from step {gpu_run['stopped_at']:,}" in second.stdout
    config = json.load(open(os.path.join(gpu_run["out"], "config.json")))
    done = json.load(open(os.path.join(gpu_run["out"], "done")))
    assert done["steps"] == config["schedule"]["steps"]
    # every token of the mixture a target exactly once per epoch, across the interruption: the
    # resumed run took the remaining steps' windows, neither repeating nor skipping any
    epochs = config["schedule"]["epochs"]
    assert done["tokens_per_component"] == {c: q * epochs for c, q in config["trained_on"]["tokens"].items()}
    steps = [r["step"] for r in log_records(gpu_run["out"]) if r["kind"] == "train"]
    assert steps == sorted(set(steps)), "log lines repeated or lost across the resume"


def test_cuda_path_is_compiled_bf16_on_device_without_recompiles(gpu_run):
    config = json.load(open(os.path.join(gpu_run["out"], "config.json")))
    runtime = config["runtime"]
    assert (runtime["compiled"], runtime["dtype"], runtime["fused_adamw"], runtime["data_on_device"]) == \
        (True, "bfloat16", True, True)
    assert runtime["loss_impl"] == "full"
    assert "compiled, bfloat16, fused AdamW" in gpu_run["second"].stdout
    for stderr in (gpu_run["first"][2], gpu_run["second"].stderr):
        assert "[__graph_breaks]" not in stderr, stderr[-3000:]
        assert "[__recompiles]" not in stderr, stderr[-3000:]


def test_loss_falls_and_the_log_has_speed_memory_and_data_share(gpu_run):
    train = [r for r in log_records(gpu_run["out"]) if r["kind"] == "train"]
    assert train[0]["loss"] > train[-1]["loss"] + 1.0, (train[0]["loss"], train[-1]["loss"])
    steady = train[len(train) // 2:]                     # past compilation and warmup
    for r in steady:
        assert r["tok_per_s"] > 0 and r["mfu"] > 0 and r["peak_mem_gb"] > 0
    share = sorted(r["data_ms"] / r["step_ms"] for r in steady)[len(steady) // 2]
    report(tok_per_s_median=sorted(r["tok_per_s"] for r in steady)[len(steady) // 2],
           mfu_median=sorted(r["mfu"] for r in steady)[len(steady) // 2],
           step_ms_median=sorted(r["step_ms"] for r in steady)[len(steady) // 2],
           data_share_median=share, peak_mem_gb=max(r["peak_mem_gb"] for r in train),
           loss_first=train[0]["loss"], loss_last=train[-1]["loss"])
    assert share < 0.02, f"the data path takes {100 * share:.1f}% of a step (target < 2%)"


def test_bf16_evaluation_matches_float32(gpu_run):
    means = {}
    for dtype in ("float32", "bfloat16"):
        subprocess.run([sys.executable, "evaluate.py", gpu_run["out"], f"--dtype={dtype}", "--force",
                        "--eval_windows=200"], cwd=ROOT, check=True, capture_output=True, timeout=300)
        result = json.load(open(os.path.join(gpu_run["out"], "eval.json")))
        means[dtype] = {c: v["xe_mean"] for c, v in result["categories"].items()}
    gaps = {c: abs(means["bfloat16"][c] - means["float32"][c]) for c in means["float32"]}
    report(eval_bf16_minus_fp32_max=max(gaps.values()), eval_xe_float32=means["float32"])
    assert max(gaps.values()) < 0.02, gaps


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
def test_two_rank_nccl_ddp(gpu_run, tmp_path):
    out = str(tmp_path / "ddp")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           *train_command(gpu_run["data_dir"], out, 1)[1:]]
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    config = json.load(open(os.path.join(out, "config.json")))
    done = json.load(open(os.path.join(out, "done")))
    assert config["runtime"]["world_size"] == 2
    assert done["tokens_per_component"] == config["trained_on"]["tokens"]


@pytest.mark.parametrize("impl", ["chunked"])
def test_fused_output_layer_matches_the_full_logits_in_bf16(impl):
    """The output layers that never write the logits give the full path's per-token losses and
    gradients within bf16 rounding, at GPT-2's vocabulary, with ignored targets."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=2, n_head=4, n_embd=256)).cuda()
    x = torch.randint(0, 50257, (16, BLOCK), device="cuda")
    y = torch.randint(0, 50257, (16, BLOCK), device="cuda")
    y[3, 40:] = -1
    results = {}
    for name in ("full", impl):
        model.loss_impl = name
        model.zero_grad()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            losses = model(x, y)
        (losses.sum() / (y >= 0).sum()).backward()
        results[name] = losses.detach(), {n: p.grad.float().clone() for n, p in model.named_parameters()}
    (ref, ref_grads), (ours, our_grads) = results["full"], results[impl]
    assert torch.all(ours[3, 40:] == 0)
    loss_gap = (ours - ref).abs().max().item()
    grad_gaps = {n: ((our_grads[n] - g).norm() / g.norm()).item() for n, g in ref_grads.items()}
    report(**{f"{impl}_max_loss_gap": loss_gap, f"{impl}_max_grad_rel_gap": max(grad_gaps.values())})
    assert loss_gap < 0.05, loss_gap                        # bf16 logits: ~2^-8 relative
    assert max(grad_gaps.values()) < 0.03, grad_gaps
