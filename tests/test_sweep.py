"""sweep.sh end to end on a reduced synthetic sweep: report, idempotence, interruption and resume."""
import csv
import glob
import json
import os
import re
import signal
import subprocess
import time

import numpy as np
import pytest

from conftest import ROOT, TINY_SYNTHETIC

# on CPU also on a GPU host: the tests compare numbers that only the CPU path makes bit-identical
TRAIN_ARGS = ["--n_layer=1", "--n_head=2", "--n_embd=16", "--batch_size=4", "--warmup_iters=2",
              "--log_interval=5", "--eval_interval=20", "--val_windows=8", "--device=cpu"]


def sweep_env(tmp, **extra):
    env = dict(os.environ, OUT=f"{tmp}/out", RESULTS=f"{tmp}/results", DATA=f"{tmp}/synthetic",
               PREPARE_ARGS=" ".join(a for a in TINY_SYNTHETIC if not a.startswith("--source")),
               KS="1 2", SEEDS="1", PARALLEL="2", EVAL_ARGS="--eval_windows=30 --cpu_threads=1 --device=cpu")
    env.update(extra)
    return env


def run_sweep(tmp, *args, **extra):
    return subprocess.run(["bash", "sweep.sh", "synthetic", *TRAIN_ARGS, *args], cwd=ROOT,
                          env=sweep_env(tmp, **extra), capture_output=True, text=True, timeout=400)


@pytest.fixture(scope="module")
def finished_sweep(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sweep")
    # two faked GPUs with two runs per card: four slots, dealt to the GPUs in turn (on CPU the
    # CUDA_VISIBLE_DEVICES each run gets changes nothing else)
    result = run_sweep(tmp, "--token_budget=1500", "--epochs=2", N_GPUS="2", RUNS_PER_GPU="2", PARALLEL="auto")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return tmp, result


def run_folders(tmp):
    """{readable name: folder}: the name without its identity hash."""
    return {os.path.basename(p).rsplit("_", 1)[0]: p for p in glob.glob(f"{tmp}/out/synthetic_k*")}


def test_sweep_writes_a_consistent_report(finished_sweep):
    tmp, result = finished_sweep
    folders = run_folders(tmp)
    assert sorted(folders) == ["synthetic_k1_1L-16d-2h_s1", "synthetic_k2_1L-16d-2h_s1",
                               "synthetic_k2ctrl_1L-16d-2h_s1", "synthetic_k2expo_1L-16d-2h_s1",
                               "synthetic_k2tag_1L-16d-2h_s1"]
    runs = sorted(folders.values())
    for run in runs:
        for name in ("config.json", "log.jsonl", "ckpt.pt", "done", "eval.json", "eval.npz", "train.log"):
            assert os.path.exists(os.path.join(run, name)), (run, name)
    with open(f"{tmp}/results/results.csv") as f:
        rows = list(csv.DictReader(f))
    categories = json.load(open(f"{tmp}/synthetic/meta.json"))["components"]
    assert len(rows) == 4 * len(categories) + 2              # the tagged mixture: its own two components
    for run in runs:   # the table carries the numbers evaluate.py wrote
        summary = json.load(open(os.path.join(run, "eval.json")))
        for row in (r for r in rows if r["run"] == summary["run"]):
            expected = summary["categories"][row["category"]]["xe_mean"]
            assert float(row["xe_mean"]) == pytest.approx(expected, rel=1e-4)
    report = open(f"{tmp}/results/REPORT.md").read()
    assert "all 2 runs trained on 3,000 tokens" in report
    # the decomposition with every arm, the learner beside the model, a generated conclusion; the
    # four parts sum to the total to float precision on this real sweep
    assert "## Decomposition" in report and "learner identification" in report and "## Conclusion" in report
    fits = json.load(open(f"{tmp}/results/fits.json"))
    for p in fits["decomposition"]["parts"]:
        assert set(p["parts"]) == {"scarcity", "dilution", "sharing", "identification"}
        assert sum(x["value"] for x in p["parts"].values()) == pytest.approx(p["total"]["value"], abs=1e-12)
    checks = {c["arm"]: c for c in fits["control_check"]}
    assert set(checks) == {"control", "exposure", "tagged"} and all(c["mixture"] for c in checks.values())
    assert "dash-dot: the learner" in report
    # research question 3: the chain no run trained on, against the in-context learner, per K
    unseen = report.split("## Unseen components")[1].split("\n## ")[0]
    gaps = re.findall(r"\| (\d) \| 1 \| [\d.]+ \[[^]]+\] † \| [\d.]+ \[[^]]+\] † \| ([\d.-]+) \[", unseen)
    assert [k for k, _ in gaps] == ["1", "2"], unseen
    k1 = json.load(open(os.path.join(folders["synthetic_k1_1L-16d-2h_s1"], "eval.json")))
    held_out = [c for c, v in k1["categories"].items() if not v["in_mixture"]]
    with np.load(os.path.join(folders["synthetic_k1_1L-16d-2h_s1"], "eval.npz")) as z:   # model - context
        gap = np.mean(np.concatenate([z[f"model:{c}"] - z[f"context:{c}"] for c in held_out if c in unseen]))
    assert float(gaps[0][1]) == pytest.approx(gap, abs=1e-4)
    conclusion = report.split("## Conclusion")[1].split("\n## ")[0]     # one seed: nothing established
    assert "- Unseen components (research question 3): Whether more training components help on unseen " \
           "ones is not established" in conclusion
    for target in re.findall(r"\]\(([^)]+)\)", report):
        assert os.path.exists(os.path.join(tmp, "results", target)), target
    assert f"{tmp}/results/REPORT.md" in result.stdout
    assert os.path.exists(f"{tmp}/out/sweep.log")


def test_the_listed_grid_is_exactly_the_runs_the_sweep_trains(finished_sweep, monkeypatch):
    """--list (one train.py command line a run, for a SLURM array) names the sweep's own folders."""
    import contextlib
    import io
    import shlex
    import train
    tmp, _ = finished_sweep
    listed = subprocess.run(["bash", "sweep.sh", "--list", "synthetic", *TRAIN_ARGS, "--token_budget=1500",
                             "--epochs=2"], cwd=ROOT, env=sweep_env(tmp), capture_output=True, text=True,
                            timeout=60)
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    monkeypatch.chdir(ROOT)
    folders = []
    for line in lines:
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            train.main([*shlex.split(line), "--print_run_dir"])
        folders.append(printed.getvalue().strip())
    assert len(lines) == 5 and sorted(folders) == sorted(run_folders(tmp).values())


def test_runs_per_card_and_parallel_deal_slots_to_the_gpus(finished_sweep):
    tmp, result = finished_sweep
    assert "5 runs, 4 at a time on 2 GPU(s)" in result.stdout
    gpus = dict(re.findall(r"(synthetic_k[\w-]+?)_[0-9a-f]{8}: training on GPU (\d)", result.stdout))
    # slot i runs the runs i, i + 4, ... and sits on GPU i mod 2: runs 0, 2 and 4 on GPU 0
    assert gpus == {"synthetic_k1_1L-16d-2h_s1": "0", "synthetic_k2_1L-16d-2h_s1": "1",
                    "synthetic_k2ctrl_1L-16d-2h_s1": "0", "synthetic_k2expo_1L-16d-2h_s1": "1",
                    "synthetic_k2tag_1L-16d-2h_s1": "0"}, result.stdout


def test_parallel_keeps_meaning_runs_at_once(tmp_path):
    """PARALLEL overrides the runs at once whatever RUNS_PER_GPU says (checked before any run)."""
    result = run_sweep(tmp_path, "--token_budget=1500", "--epochs=2", N_GPUS="3", RUNS_PER_GPU="2",
                       PARALLEL="5", KS="1", SEEDS="1", CONTROLS="0")
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "1 runs, 5 at a time on 3 GPU(s)" in result.stdout


def test_second_invocation_trains_nothing(finished_sweep):
    tmp, _ = finished_sweep
    ckpts = {p: os.path.getmtime(p) for p in glob.glob(f"{tmp}/out/*/ckpt.pt")}
    evals = {p: os.path.getmtime(p) for p in glob.glob(f"{tmp}/out/*/eval.npz")}
    result = run_sweep(tmp, "--token_budget=1500", "--epochs=2")
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.count("finished and evaluated, skipped") == 5
    assert ": training" not in result.stdout
    assert ckpts == {p: os.path.getmtime(p) for p in ckpts}
    assert evals == {p: os.path.getmtime(p) for p in evals}


def test_interrupted_sweep_resumes(tmp_path):
    args = ["--token_budget=6000", "--epochs=4", "--ckpt_interval=5"]
    env = sweep_env(tmp_path, KS="2", PARALLEL="1", CONTROLS="0")
    proc = subprocess.Popen(["bash", "sweep.sh", "synthetic", *TRAIN_ARGS, *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    ckpt = None
    deadline = time.time() + 120
    while ckpt is None and time.time() < deadline:
        ckpt = next(iter(glob.glob(f"{tmp_path}/out/synthetic_k2_*/ckpt.pt")), None)
        time.sleep(0.05)
    assert ckpt is not None, proc.communicate()
    proc.send_signal(signal.SIGTERM)
    stdout, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, stdout
    assert "interrupted" in stdout
    run = os.path.dirname(ckpt)
    assert not os.path.exists(f"{run}/done")
    result = subprocess.run(["bash", "sweep.sh", "synthetic", *TRAIN_ARGS, *args], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=400)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert f"{os.path.basename(run)}: resuming" in result.stdout
    log = open(f"{run}/train.log").read()
    assert "resuming" in log and os.path.exists(f"{tmp_path}/results/REPORT.md")
    done = json.load(open(f"{run}/done"))
    assert done["tokens"] == 6000 * 4


def sweep_processes(out):
    """PIDs of processes a sweep started: they all hold its lock file open (inherited)."""
    lock, found = os.path.realpath(f"{out}/.sweep.lock"), []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
            if any(os.path.realpath(f"/proc/{pid}/fd/{fd}") == lock for fd in fds):
                found.append(int(pid))
        except OSError:
            pass
    return found


def eval_numbers(folder):
    summary = json.load(open(os.path.join(folder, "eval.json")))
    return {c: v["xe_mean"] for c, v in summary["categories"].items()}


def test_kill_9_of_the_sweep_leaves_nothing_running_and_a_restart_ends_as_if_uninterrupted(
        finished_sweep, tmp_path):
    reference, _ = finished_sweep
    args = ["synthetic", *TRAIN_ARGS, "--token_budget=1500", "--epochs=2", "--ckpt_interval=3"]
    env = sweep_env(tmp_path, KS="1 2")
    proc = subprocess.Popen(["bash", "sweep.sh", *args], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not glob.glob(f"{tmp_path}/out/synthetic_k*/ckpt.pt") and time.time() < deadline:
        time.sleep(0.02)
    started = set(sweep_processes(f"{tmp_path}/out")) - {proc.pid}
    assert started, "the sweep started nothing"
    os.kill(proc.pid, signal.SIGKILL)          # the sweep's own PID only, never its process group
    proc.wait()
    deadline = time.time() + 30
    while sweep_processes(f"{tmp_path}/out") and time.time() < deadline:
        time.sleep(0.1)
    assert not sweep_processes(f"{tmp_path}/out"), "trainers or slots of the killed sweep still run"
    result = subprocess.run(["bash", "sweep.sh", *args], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=400)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    restarted, uninterrupted = run_folders(tmp_path), run_folders(reference)
    assert sorted(restarted) == ["synthetic_k1_1L-16d-2h_s1", "synthetic_k2_1L-16d-2h_s1",
                                 "synthetic_k2ctrl_1L-16d-2h_s1", "synthetic_k2expo_1L-16d-2h_s1",
                                 "synthetic_k2tag_1L-16d-2h_s1"]
    for name, folder in restarted.items():     # the same identities, and bit-identical numbers
        assert os.path.basename(folder) == os.path.basename(uninterrupted[name])
        assert eval_numbers(folder) == eval_numbers(uninterrupted[name])


def test_a_second_sweep_on_the_same_runs_folder_is_refused(tmp_path):
    env = sweep_env(tmp_path, KS="1", CONTROLS="0")
    first = subprocess.Popen(["bash", "sweep.sh", "synthetic", *TRAIN_ARGS, "--token_budget=1500",
                              "--epochs=50"], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 60
        while not os.path.exists(f"{tmp_path}/out/.sweep.pid") and time.time() < deadline:
            time.sleep(0.02)
        second = subprocess.run(["bash", "sweep.sh", "synthetic", *TRAIN_ARGS], cwd=ROOT, env=env,
                                capture_output=True, text=True, timeout=60)
        assert second.returncode == 2
        assert f"another sweep.sh (PID {first.pid}) is running on {tmp_path}/out" in second.stderr
    finally:
        first.send_signal(signal.SIGTERM)
        first.wait(timeout=120)


def test_an_ablation_lands_beside_the_default_runs(finished_sweep):
    tmp, _ = finished_sweep
    before = {p: os.path.getmtime(os.path.join(p, "ckpt.pt")) for p in run_folders(tmp).values()}
    result = run_sweep(tmp, "--token_budget=1500", "--epochs=3", KS="1 2", CONTROLS="0")
    assert result.returncode == 0, result.stdout[-3000:]
    assert result.stdout.count(": training") == 2 and "skipped" not in result.stdout
    assert before == {p: os.path.getmtime(os.path.join(p, "ckpt.pt")) for p in before}   # untouched
    with open(f"{tmp}/results/results.csv") as f:
        experiments = {row["experiment"] for row in csv.DictReader(f)}
    assert len(experiments) == 2


def test_arxiv_sweep_without_gpu_stops_with_an_estimate(tmp_path):
    def estimate(**arms):
        return subprocess.run(["bash", "sweep.sh"], cwd=ROOT, capture_output=True, text=True, timeout=120,
                              env=dict(os.environ, OUT=f"{tmp_path}/out", DATA=f"{tmp_path}/arxiv",
                                       CUDA_VISIBLE_DEVICES="", **arms))     # no GPU, also on a GPU host
    result = estimate()
    assert result.returncode == 1
    assert "no GPU visible" in result.stdout and "bash sweep.sh synthetic" in result.stdout
    assert "days" in result.stdout
    assert not os.path.exists(tmp_path / "arxiv")          # stopped before downloading anything
    # the estimate counts the arms the sweep would run: 3 seeds x (5 mixtures + 4 per arm at K >= 2)
    assert "(51 runs" in result.stdout
    assert "(27 runs" in estimate(ARMS="control").stdout and "(15 runs" in estimate(CONTROLS="0").stdout


def copy_of_the_repository(dst):
    """The scripts, package and configs (not .git, data or runs) in a folder of their own."""
    import shutil
    shutil.copytree(ROOT, dst, ignore=shutil.ignore_patterns(".git", "data", "out", "results", "__pycache__",
                                                             ".pytest_cache", ".whl", "*.log"))
    return dst


def test_an_edit_to_the_code_trains_new_runs_and_a_comment_does_not(tmp_path):
    """Code is in a run's identity: a comment or docstring edit reuses every run; a changed
    learning-rate schedule trains new runs beside the old, and the report keeps them apart."""
    repo = copy_of_the_repository(tmp_path / "repo")
    args = ["bash", "sweep.sh", "synthetic", *TRAIN_ARGS, "--token_budget=1500", "--epochs=2"]
    env = sweep_env(tmp_path, CONTROLS="0")

    def sweep():
        result = subprocess.run(args, cwd=repo, env=env, capture_output=True, text=True, timeout=400)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        return result.stdout

    first = sweep()
    assert first.count(": training") == 2
    train_py = repo / "train.py"
    source = train_py.read_text()
    edited = source.replace('    """Linear warmup, then cosine decay to min_lr at the last step."""',
                            '    """Warmup, then cosine decay (a reworded docstring)."""\n    # and a comment')
    assert edited != source
    train_py.write_text(edited)
    assert sweep().count("finished and evaluated, skipped") == 2
    schedule = edited.replace("return cfg.learning_rate * (step + 1) / cfg.warmup_iters",
                              "return cfg.learning_rate * (step + 1) / (2 * cfg.warmup_iters)")
    assert schedule != edited
    train_py.write_text(schedule)
    third = sweep()
    assert third.count(": training") == 2
    assert len(glob.glob(f"{tmp_path}/out/synthetic_k*")) == 4           # the old runs stay beside the new
    report = open(f"{tmp_path}/results/REPORT.md").read()
    assert re.search(r"\| code = 'train [0-9a-f]{8}' \(main: 'train [0-9a-f]{8}'\)", report), report[:3000]


@pytest.mark.parametrize("extra", ["--k=1", "--seed=3", "--arm=tagged", "--components=chain0,chain1",
                                   "--out_root=elsewhere"])
def test_an_extra_argument_the_sweep_sets_itself_is_refused(tmp_path, extra):
    """Passed to every run of the grid, it would train one folder twice at once: one line, exit 2."""
    result = run_sweep(tmp_path, extra)
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert f"error: {extra} is set by sweep.sh for every run of its grid" in result.stderr
    assert not os.path.exists(f"{tmp_path}/out/synthetic_k1")


@pytest.mark.parametrize("stray", ["synthetc", "--dropout", "small"])
def test_an_argument_that_is_not_a_mode_or_setting_is_refused_before_anything_runs(tmp_path, stray):
    result = run_sweep(tmp_path, stray)
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert f"error: '{stray}' is neither a mode (synthetic, arxiv), --list, nor a --key=value" in result.stderr
    assert not os.path.exists(f"{tmp_path}/synthetic") and not os.path.exists(f"{tmp_path}/out")


@pytest.mark.parametrize("setting, said", [
    ({"PARALLEL": "0"}, "PARALLEL=0: use a whole number of runs, 1 or more"),
    ({"PARALLEL": "two"}, "PARALLEL=two: use a whole number of runs"),
    ({"RUNS_PER_GPU": "auto"}, "RUNS_PER_GPU=auto: use a whole number of runs"),
    ({"RUNS_PER_GPU": "-1"}, "RUNS_PER_GPU=-1: use a whole number of runs"),
    ({"KS": "1 x"}, 'KS="1 x": each K is a whole number of components, 1 or more'),
    ({"KS": "0 2"}, 'KS="0 2": each K is a whole number'),
    ({"SEEDS": "1 -1"}, 'SEEDS="1 -1": each seed is a whole number, 0 or more'),
    ({"SEEDS": "1 01"}, 'SEEDS="1 01": each seed is a whole number'),
    ({"ARMS": "control bogus"}, "ARMS=\"control bogus\": 'bogus' is not an arm; use some of: control exposure")])
def test_a_grid_setting_out_of_range_is_refused_before_anything_runs(tmp_path, setting, said):
    result = run_sweep(tmp_path, **setting)
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert f"error: {said}" in result.stderr
    assert not os.path.exists(f"{tmp_path}/synthetic") and not os.path.exists(f"{tmp_path}/out")


def test_a_size_sweep_reaches_the_size_section(tmp_path):
    """SIZES on synthetic data (research question 2): two sizes x K = 1, 2 x one seed, every arm;
    the report's size section has each size's XE, parts and distance to the learner, and the
    paired contrasts between the sizes at each K, of XE and of each part."""
    model = [a for a in TRAIN_ARGS if not a.startswith(("--n_layer", "--n_head", "--n_embd"))]
    result = subprocess.run(["bash", "sweep.sh", "synthetic", *model, "--token_budget=1500", "--epochs=2"],
                            cwd=ROOT, env=sweep_env(tmp_path, SIZES="1L-8d-2h 1L-16d-2h"), capture_output=True,
                            text=True, timeout=400)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "10 runs" in result.stdout
    report = open(f"{tmp_path}/results/REPORT.md").read()
    section = report.split("## Model size (research question 2)")[1].split("\n## ")[0]
    rows = re.findall(r"^\| (1L-\d+d-2h) \| [\d,]+ \| (\d) \| 1 \| ", section, flags=re.M)
    assert sorted(rows) == [("1L-16d-2h", "1"), ("1L-16d-2h", "2"), ("1L-8d-2h", "1"), ("1L-8d-2h", "2")]
    assert re.search(r"^\| 2 \| 1L-16d-2h - 1L-8d-2h \| ", section, flags=re.M), section
    fits = json.load(open(f"{tmp_path}/results/fits.json"))
    results = fits["model_size"]["results"]
    assert [r["size"] for r in results] == ["1L-8d-2h", "1L-16d-2h"]               # smallest first
    assert all(set(r["parts"]["2"]["parts"]) == {"scarcity", "dilution", "sharing", "identification"}
               for r in results)
    assert all(set(r["learner_gap"]) == {"1", "2"} for r in results)
    # which parts change with size: each contrast is the two sizes' parts' difference, and one seed
    # per size establishes nothing
    contrasts = fits["model_size"]["part_contrasts"]
    assert [c["part"] for c in contrasts] == ["scarcity", "dilution", "sharing", "identification"]
    for c in contrasts:
        small, large = (r["parts"]["2"]["parts"][c["part"]]["value"] for r in results)
        assert c["k"] == 2 and abs(c["difference"]["value"] - (large - small)) < 1e-9, c
        assert c["difference"]["covers"] == "documents only"
    parts_table = section.split("Which parts")[1]
    assert re.search(r"^\| 2 \| 1L-16d-2h - 1L-8d-2h \| (.* \| ){3}.* \|$", parts_table, flags=re.M)
    assert "- 1L-16d-2h against 1L-8d-2h: no part is established to change with size" in section
    assert "- Model size (research question 2), 1L-16d-2h against 1L-8d-2h: no part is established" in report
