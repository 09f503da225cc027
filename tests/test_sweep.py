"""sweep.sh end to end on a reduced synthetic sweep: report, idempotence, interruption and resume."""
import csv
import glob
import json
import os
import re
import signal
import subprocess
import time

import pytest

from conftest import ROOT, TINY_SYNTHETIC

TRAIN_ARGS = ["--n_layer=1", "--n_head=2", "--n_embd=16", "--batch_size=4", "--warmup_iters=2",
              "--log_interval=5", "--eval_interval=20", "--val_windows=8"]


def sweep_env(tmp, **extra):
    env = dict(os.environ, OUT=f"{tmp}/out", RESULTS=f"{tmp}/results", DATA=f"{tmp}/synthetic",
               PREPARE_ARGS=" ".join(a for a in TINY_SYNTHETIC if not a.startswith("--source")),
               KS="1 2 3", SEEDS="1", PARALLEL="2", EVAL_ARGS="--eval_windows=30 --cpu_threads=1")
    env.update(extra)
    return env


def run_sweep(tmp, *args, **extra):
    return subprocess.run(["bash", "sweep.sh", "synthetic", *TRAIN_ARGS, *args], cwd=ROOT,
                          env=sweep_env(tmp, **extra), capture_output=True, text=True, timeout=400)


@pytest.fixture(scope="module")
def finished_sweep(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sweep")
    result = run_sweep(tmp, "--token_budget=1500", "--epochs=2")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return tmp, result


def test_sweep_writes_a_consistent_report(finished_sweep):
    tmp, result = finished_sweep
    runs = sorted(glob.glob(f"{tmp}/out/synthetic_k*_s1"))
    assert [os.path.basename(r) for r in runs] == [f"synthetic_k{k}_s1" for k in (1, 2, 3)]
    for run in runs:
        for name in ("config.json", "log.jsonl", "ckpt.pt", "done", "eval.json", "eval.npz", "train.log"):
            assert os.path.exists(os.path.join(run, name)), (run, name)
    with open(f"{tmp}/results/results.csv") as f:
        rows = list(csv.DictReader(f))
    categories = json.load(open(f"{tmp}/synthetic/meta.json"))["components"]
    assert len(rows) == 3 * len(categories)
    for run in runs:   # the table carries the numbers evaluate.py wrote
        summary = json.load(open(os.path.join(run, "eval.json")))
        for row in (r for r in rows if r["run"] == summary["run"]):
            assert float(row["xe_mean"]) == pytest.approx(summary["categories"][row["category"]]["xe_mean"], rel=1e-4)
    report = open(f"{tmp}/results/REPORT.md").read()
    assert "all 3 runs trained on 3,000 tokens" in report
    for target in re.findall(r"\]\(([^)]+)\)", report):
        assert os.path.exists(os.path.join(tmp, "results", target)), target
    assert f"{tmp}/results/REPORT.md" in result.stdout
    assert os.path.exists(f"{tmp}/out/sweep.log")


def test_second_invocation_trains_nothing(finished_sweep):
    tmp, _ = finished_sweep
    ckpts = {p: os.path.getmtime(p) for p in glob.glob(f"{tmp}/out/*/ckpt.pt")}
    evals = {p: os.path.getmtime(p) for p in glob.glob(f"{tmp}/out/*/eval.npz")}
    result = run_sweep(tmp, "--token_budget=1500", "--epochs=2")
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.count("finished and evaluated, skipped") == 3
    assert ": training" not in result.stdout
    assert ckpts == {p: os.path.getmtime(p) for p in ckpts}
    assert evals == {p: os.path.getmtime(p) for p in evals}


def test_interrupted_sweep_resumes(tmp_path):
    args = ["--token_budget=6000", "--epochs=4", "--ckpt_interval=5"]
    env = sweep_env(tmp_path, KS="2", PARALLEL="1")
    proc = subprocess.Popen(["bash", "sweep.sh", "synthetic", *TRAIN_ARGS, *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    ckpt = f"{tmp_path}/out/synthetic_k2_s1/ckpt.pt"
    deadline = time.time() + 120
    while not os.path.exists(ckpt) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert os.path.exists(ckpt), proc.communicate()
    proc.send_signal(signal.SIGTERM)
    stdout, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, stdout
    assert "interrupted" in stdout
    assert not os.path.exists(f"{tmp_path}/out/synthetic_k2_s1/done")
    result = subprocess.run(["bash", "sweep.sh", "synthetic", *TRAIN_ARGS, *args], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=400)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "synthetic_k2_s1: resuming" in result.stdout
    log = open(f"{tmp_path}/out/synthetic_k2_s1/train.log").read()
    assert "resuming" in log and os.path.exists(f"{tmp_path}/results/REPORT.md")
    done = json.load(open(f"{tmp_path}/out/synthetic_k2_s1/done"))
    assert done["tokens"] == 6000 * 4


def test_arxiv_sweep_without_gpu_stops_with_an_estimate(tmp_path):
    result = subprocess.run(["bash", "sweep.sh"], cwd=ROOT, capture_output=True, text=True, timeout=120,
                            env=dict(os.environ, OUT=f"{tmp_path}/out", DATA=f"{tmp_path}/arxiv"))
    assert result.returncode == 1
    assert "no GPU visible" in result.stdout and "bash sweep.sh synthetic" in result.stdout
    assert "days" in result.stdout
    assert not os.path.exists(tmp_path / "arxiv")          # stopped before downloading anything
