"""
The GPU path rehearsed on the CPU: torch.compile, bf16 autocast and fused AdamW, asked for by
name, run through train.py and evaluate.py themselves, so every test run executes the code that
CUDA runs except its kernels (tests/test_gpu.py runs those on a GPU).
"""
import json
import os

import numpy as np
import pytest
import torch
from torch._dynamo.utils import counters

import evaluate
import train
from harness.data import Dataset
from conftest import make_real_vocab

TINY = ["--n_layer=1", "--n_head=2", "--n_embd=16", "--batch_size=4", "--device=cpu", "--cpu_threads=1",
        "--warmup_iters=2", "--log_interval=1", "--eval_interval=7", "--val_windows=8", "--ckpt_interval=5"]
# 1,200 tokens in steps of 4 windows: 3 steps an epoch, 10 epochs, every step padded to fixed rows
SCHEDULE = ["--k=2", "--token_budget=1200", "--epochs=10"]


def losses(out_dir):
    with open(os.path.join(out_dir, "log.jsonl")) as f:
        records = [json.loads(line) for line in f]
    return {(r["kind"], r["step"]): r.get("loss", r.get("val_loss")) for r in records}


def run(data_dir, out_dir, *extra):
    train.main([f"--data_dir={data_dir}", f"--out_dir={out_dir}", *TINY, *SCHEDULE, *extra])
    return losses(out_dir)


def test_compiled_training_matches_eager_in_one_graph_through_a_resume(tiny_synthetic, tmp_path,
                                                                      monkeypatch, capsys):
    eager = run(tiny_synthetic, tmp_path / "eager")
    capsys.readouterr()
    counters.clear()
    monkeypatch.setattr(torch._dynamo.config, "error_on_recompile", True)
    # the CUDA path as a whole: compiled, and windows gathered by torch from device-resident tokens
    compiled = run(tiny_synthetic, tmp_path / "compiled", "--compile=True", "--gpu_resident=True")
    first_line = capsys.readouterr().out.splitlines()[0]
    assert "(compiled, float32); data on device" in first_line
    configs = [json.load(open(tmp_path / name / "config.json")) for name in ("eager", "compiled")]
    assert configs[0]["identity"] == configs[1]["identity"]       # speed switches are not identity
    assert configs[1]["runtime"]["compiled"] and configs[1]["runtime"]["data_on_device"]
    # one frame, one graph, no graph break, no recompilation across 30 steps, 3 epoch boundaries,
    # validation in between (the uncompiled twin shares the weights) and train/eval mode switches
    assert counters["frames"]["total"] == 1 and counters["stats"]["unique_graphs"] == 1
    assert not counters["graph_break"]
    assert eager.keys() == compiled.keys() and len([k for k in eager if k[0] == "train"]) == 30
    for key in eager:
        assert abs(eager[key] - compiled[key]) < 1e-4, (key, eager[key], compiled[key])

    # killed at step 12 (after the checkpoint at 10), then the same command resumes, compiled again
    real_lr = train.learning_rate_at
    def crash_at_step_12(step, cfg, total):
        if step == 12:
            raise KeyboardInterrupt
        return real_lr(step, cfg, total)
    monkeypatch.setattr(train, "learning_rate_at", crash_at_step_12)
    with pytest.raises(KeyboardInterrupt):
        run(tiny_synthetic, tmp_path / "resumed", "--compile=True", "--gpu_resident=True")
    monkeypatch.setattr(train, "learning_rate_at", real_lr)
    capsys.readouterr()
    counters.clear()
    resumed = run(tiny_synthetic, tmp_path / "resumed", "--compile=True", "--gpu_resident=True")
    printed = capsys.readouterr().out.splitlines()
    assert "(compiled, float32); data on device" in printed[0] and printed[1].startswith("resuming")
    # the new process of a real resume compiles once; in this process the cached graph is reused
    assert counters["frames"]["total"] <= 1 and not counters["graph_break"]
    assert resumed.keys() == eager.keys()
    for key in eager:
        assert abs(eager[key] - resumed[key]) < 1e-4, (key, eager[key], resumed[key])


def test_bf16_autocast_and_fused_adamw_on_cpu_train_and_evaluate_near_float32(tiny_synthetic, tmp_path):
    float32 = run(tiny_synthetic, tmp_path / "float32")
    bf16 = run(tiny_synthetic, tmp_path / "bf16", "--dtype=bfloat16", "--fused_adamw=True")
    config = json.load(open(tmp_path / "bf16" / "config.json"))
    assert config["runtime"]["dtype"] == "bfloat16" and config["runtime"]["fused_adamw"]
    assert config["identity"] == json.load(open(tmp_path / "float32" / "config.json"))["identity"]
    assert bf16.keys() == float32.keys()
    for key in float32:
        assert np.isfinite(bf16[key]) and abs(bf16[key] - float32[key]) < 0.05, key
    # autocast really on: bf16's rounding shows (a run that ignored --dtype would match float32)
    assert max(abs(bf16[key] - float32[key]) for key in float32) > 1e-5
    fused = run(tiny_synthetic, tmp_path / "fused", "--fused_adamw=True")
    for key in float32:                             # the fused kernel: rounding differences only
        assert abs(fused[key] - float32[key]) < 1e-4, key

    means = {}
    for dtype in ("float32", "bfloat16"):
        evaluate.main([str(tmp_path / "float32"), f"--dtype={dtype}", "--force", "--eval_windows=20",
                       "--device=cpu"])
        result = json.load(open(tmp_path / "float32" / "eval.json"))
        means[dtype] = {c: v["xe_mean"] for c, v in result["categories"].items()}
    for c in means["float32"]:
        assert np.isfinite(means["bfloat16"][c])
        assert abs(means["bfloat16"][c] - means["float32"][c]) < 0.05, c


def test_the_gpu_tests_fallback_data_has_gpt2s_vocabulary(tmp_path):
    ds = Dataset(make_real_vocab(tmp_path / "generated", split_tokens=(20_000, 5_000, 5_000)))
    assert (ds.vocab_size, ds.eot) == (50257, 50256)
    for comp in ds.components:
        tokens = np.asarray(ds.tokens(comp, "train"))
        offsets = ds.offsets(comp, "train")
        assert tokens.max() == ds.eot and (tokens[offsets[1:] - 1] == ds.eot).all()
        assert len(np.unique(tokens)) > 1000          # spread over the vocabulary, not a toy range


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_hand_written_cross_entropy_matches_torchs_in_value_and_gradient(dtype):
    from model import token_losses
    torch.manual_seed(0)
    vocab = 1000
    logits = (3 * torch.randn(3, 20, vocab)).to(dtype)
    targets = torch.randint(0, vocab, (3, 20))
    targets[:, 15:] = -1                                  # padding targets, as in a short window
    weights = torch.rand(3, 20)
    ours = logits.clone().requires_grad_()
    losses = token_losses(ours, targets)
    (losses * weights).sum().backward()
    reference = logits.clone().requires_grad_()
    expected = torch.nn.functional.cross_entropy(reference.float().reshape(-1, vocab), targets.reshape(-1),
                                                 ignore_index=-1, reduction="none").view(targets.shape)
    (expected * weights).sum().backward()
    assert losses.dtype == torch.float32 and (losses[:, 15:] == 0).all()
    assert torch.allclose(losses, expected, atol=1e-5)
    assert ours.grad.dtype == dtype
    assert torch.allclose(ours.grad.float(), reference.grad.float(), atol=1e-5 if dtype == torch.float32 else 1e-2)


def test_the_optimizer_is_fused_exactly_where_asked(tiny_synthetic, tmp_path):
    """--fused_adamw reaches torch's AdamW (fused=True), and is off where not asked."""
    from types import SimpleNamespace
    for switch, expected in (("True", True), ("False", False)):
        cfg = train.read_config([f"--data_dir={tiny_synthetic}", "--device=cpu", f"--fused_adamw={switch}",
                                 "--n_layer=1", "--n_head=2", "--n_embd=16", "--k=2"])
        runtime = train.resolve_runtime(cfg, torch.device("cpu"))
        share = train.Share(["chain0", "chain1"], [1, 1], [0.5, 0.5], 1)
        job = train.Job(cfg, SimpleNamespace(ckpt=str(tmp_path / "none")), share, 1,
                        train.Place(torch.device("cpu"), 0, 1))
        model, _ = train.build_model(job, runtime, 9)
        assert bool(model.optimizer.defaults.get("fused")) is expected, switch
