"""bench.py's bookkeeping on CPU: the sweep's cost from measured rates, kernels by class, and the
runs-per-card measurement (real worker processes sharing one device)."""
import json
from types import SimpleNamespace

import pytest

import bench
from harness import benchkit, cost, mixture
from configurator import config_defaults, configure


def bench_config(*argv):
    return SimpleNamespace(**configure(config_defaults(vars(bench)), list(argv)))


def test_sweep_cost_counts_every_arm_and_its_share_of_steps():
    assert list(cost.ARM_SHARES) == list(mixture.ARMS)             # one list of arms
    # per seed: 5 mixtures, 4 steps-matched controls, 4 tagged mixtures (each a mixture's steps) and
    # 4 exposure-matched controls (1/K of the steps): 17 runs, 13 + 1/2 + 1/3 + 1/4 + 1/5 mixtures
    runs, equivalents, hours = cost.sweep_cost(1e6, 1e3, slots=1, fixed_s=10, eval_s=5)
    assert runs == 51 and equivalents == pytest.approx(3 * (13 + 1 / 2 + 1 / 3 + 1 / 4 + 1 / 5))
    assert hours == pytest.approx((equivalents * 1e6 / 1e3 + 51 * 15) / 3600)
    # two slots at half the rate each: the same training time, the fixed costs overlapped
    _, _, two = cost.sweep_cost(1e6, 5e2, slots=2, fixed_s=10, eval_s=5)
    assert two == pytest.approx((equivalents * 1e6 / 1e3 + 51 * 15 / 2) / 3600)


def test_kernel_classes_sum_device_time_per_step():
    def event(key, us, device="CUDA"):
        return SimpleNamespace(key=key, self_device_time_total=us, device_type=SimpleNamespace(name=device))
    averages = [event("nvjet_tst_128x256_gemm", 3000), event("triton_red_fused_logsumexp_0", 2000),
                event("fused_adam_kernel", 500), event("aten::mm", 9999, device="CPU"),
                event("flash_fwd_kernel", 1000), event("something_else", 500)]
    classes = benchkit.kernel_classes(averages, n_steps=5)
    assert classes["matrix products (cuBLAS/CUTLASS)"] == pytest.approx(0.6)
    assert classes["attention (flash)"] == pytest.approx(0.2) and classes["other"] == pytest.approx(0.1)
    assert sum(classes.values()) == pytest.approx(7.0 / 5)           # CPU rows left out
    assert list(classes)[0] == "matrix products (cuBLAS/CUTLASS)"    # largest first


def test_runs_side_by_side_are_measured_in_separate_processes(tmp_path):
    cfg = bench_config("--device=cpu", "--batch_size=2", "--card_sizes=1L-16d-2h-v65", "--card_runs=1,2",
                       "--card_seconds=0.5")
    rows = bench.bench_card(cfg, str(tmp_path))
    assert [(r["size"], r["runs"]) for r in rows] == [("1L-16d-2h-v65", 1), ("1L-16d-2h-v65", 2)]
    assert all(r["tokens_per_s"] > 0 for r in rows)


def test_the_gpu_benchmark_keeps_one_partial_record_that_grows_part_by_part(tmp_path, monkeypatch):
    """Each part is saved as it finishes, a failed part named beside the others: one record in
    the .partial file, not one copy per part."""
    monkeypatch.setattr(bench, "bench_train", lambda cfg, work: {"small": 1})
    monkeypatch.setattr(bench, "bench_loop", lambda cfg, work: 1 / 0)
    monkeypatch.setattr(bench, "bench_card", lambda cfg, work: [{"size": "small", "runs": 1}])
    path = str(tmp_path / "bench.json")
    result = bench.bench_gpu(bench_config(f"--json_file={path}"), str(tmp_path))
    with open(path + ".partial") as f:
        records = json.load(f)
    assert records == [result] and set(result) == {"train", "loop_error", "card"}
    assert result["loop_error"].startswith("ZeroDivisionError")
