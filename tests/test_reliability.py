"""
Reliability, as a careless or hostile user would try it: nothing outside a run folder (or the
dataset being built) is ever touched, and every failure is one line that says what to run.
Links planted in copied folders, a user's `<data>.old`, readers racing a rebuild, full disks,
moved trees, another working directory, another user, damaged or torn files.
"""
import errno
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

import evaluate
import prepare
import train
from configurator import UserError
from conftest import ROOT, TINY_SYNTHETIC, make_synthetic
from harness import experiments
from harness.data import Dataset

TINY = ["--n_layer=1", "--n_head=2", "--n_embd=16", "--batch_size=4", "--device=cpu", "--cpu_threads=1",
        "--warmup_iters=2", "--log_interval=2", "--eval_interval=50", "--val_windows=8", "--token_budget=1500",
        "--epochs=1", "--k=2"]
EVAL = ["--eval_windows=20", "--device=cpu"]


def trained(data, folder, *extra):
    train.main([f"--data_dir={data}", f"--out_dir={folder}", *TINY, *extra])
    return str(folder)


def one_line(result):
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


def run(*argv, cwd=ROOT, env=None):
    return subprocess.run([sys.executable, *argv], cwd=cwd, capture_output=True, text=True, timeout=120,
                          env=env)


@pytest.fixture(scope="module")
def finished(tiny_synthetic, tmp_path_factory):
    """A trained and evaluated tiny run (copied by the tests that damage it)."""
    folder = trained(tiny_synthetic, tmp_path_factory.mktemp("run") / "run")
    evaluate.main([folder, *EVAL])
    return folder


def copy_run(finished, tmp_path):
    return shutil.copytree(finished, tmp_path / os.path.basename(finished), symlinks=True)


# ----------------------------------------------------------------------------- links, siblings

def test_a_symlinked_lock_never_writes_through(finished, tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("my notes\n")
    run_dir = copy_run(finished, tmp_path)
    os.remove(os.path.join(run_dir, ".lock"))
    os.symlink(victim, os.path.join(run_dir, ".lock"))
    data = json.load(open(os.path.join(run_dir, "config.json")))["config"]["data_dir"]
    for argv in (["evaluate.py", str(run_dir), *EVAL], ["train.py", f"--data_dir={data}", f"--out_dir={run_dir}",
                                                        *TINY]):
        line = one_line(run(*argv))
        assert ".lock is a symbolic link" in line
    assert victim.read_text() == "my notes\n"


def test_a_symlinked_sweep_pid_never_writes_through(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("my notes\n")
    (tmp_path / "out").mkdir()
    os.symlink(victim, tmp_path / "out" / ".sweep.pid")
    result = subprocess.run(["bash", "sweep.sh", "synthetic"], cwd=ROOT, capture_output=True, text=True,
                            env=dict(os.environ, OUT=str(tmp_path / "out"), DATA=str(tmp_path / "data")))
    assert result.returncode == 2 and ".sweep.pid is a symbolic link" in result.stderr
    assert victim.read_text() == "my notes\n"


def test_prepare_force_never_touches_a_users_old_sibling(tmp_path):
    data = make_synthetic(tmp_path / "synthetic")
    backup = tmp_path / "synthetic.old"
    shutil.copytree(data, backup)
    (backup / "NOTES.txt").write_text("my backup\n")
    make_synthetic(tmp_path / "synthetic", "--force", "--seed=8")
    assert (backup / "NOTES.txt").read_text() == "my backup\n" and (backup / "meta.json").exists()
    assert Dataset(data).meta["seed"] == 8
    assert not [e for e in os.listdir(tmp_path) if e.startswith(".tmp")]


def test_prepare_force_refuses_while_a_reader_holds_the_data(tmp_path):
    data = make_synthetic(tmp_path / "synthetic")
    reader = subprocess.Popen([sys.executable, "-c", "import sys, time; sys.path.insert(0, '.'); "
                               f"from harness.data import Dataset; d = Dataset({data!r}); print('reading', "
                               "flush=True); time.sleep(60)"], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert reader.stdout.readline().strip() == "reading"       # a train.py or evaluate.py reading it
        line = one_line(run("prepare.py", *TINY_SYNTHETIC, f"--data_dir={data}", "--force", "--seed=8"))
        assert "is being read by a running train.py or evaluate.py" in line
    finally:
        reader.kill()
        reader.wait()
    assert Dataset(data).meta["seed"] == 7
    prepare.main(TINY_SYNTHETIC + [f"--data_dir={data}", "--force", "--seed=8"])     # alone again: rebuilt
    assert Dataset(data).meta["seed"] == 8


def test_a_finished_build_stopped_before_its_rename_is_put_in_place(tmp_path):
    data = make_synthetic(tmp_path / "synthetic")
    stranded = tmp_path / ".tmp-synthetic-abc123"       # what a kill between the renames leaves
    os.rename(data, stranded)
    with pytest.raises(UserError, match="already holds a complete dataset"):
        prepare.main(TINY_SYNTHETIC + [f"--data_dir={data}"])
    assert Dataset(data).meta["seed"] == 7 and not stranded.exists()


# ----------------------------------------------------------------------------- full disks

def test_a_full_disk_at_a_checkpoint_is_one_line_and_loses_nothing(tiny_synthetic, tmp_path, monkeypatch):
    def full(*args, **kwargs):
        raise RuntimeError("[enforce fail at inline_container.cc:672] . PytorchStreamWriter failed writing "
                           "file data/0: file write failed")
    monkeypatch.setattr(train.torch, "save", full)
    with pytest.raises(UserError, match=r"could not write .*ckpt.pt \(no space left on the device\?\); no "
                                        r"checkpoint was kept: free some space and run the same command"):
        trained(tiny_synthetic, tmp_path / "run")
    assert not [e for e in os.listdir(tmp_path / "run") if e.startswith(".tmp-")]
    monkeypatch.undo()
    folder = trained(tiny_synthetic, tmp_path / "run")          # the rerun heals
    assert os.path.exists(os.path.join(folder, "done"))


def test_a_full_disk_during_evaluation_is_one_line(finished, tmp_path, monkeypatch):
    run_dir = copy_run(finished, tmp_path)
    before = open(os.path.join(run_dir, "eval.json")).read()

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(evaluate.np, "savez_compressed", full)
    with pytest.raises(UserError, match="no space left on the device writing"):
        evaluate.main([str(run_dir), *EVAL, "--force"])
    assert open(os.path.join(run_dir, "eval.json")).read() == before           # the old one intact


# ----------------------------------------------------------------------------- moved, elsewhere, others

def test_moved_data_is_found_where_the_user_says_it_is(tiny_synthetic, tmp_path):
    data = shutil.copytree(tiny_synthetic, tmp_path / "data" / "synthetic")
    folder = trained(data, tmp_path / "run")
    moved = tmp_path / "moved" / "synthetic"
    os.makedirs(moved.parent)
    os.rename(data, moved)
    line = one_line(run("evaluate.py", folder, *EVAL))
    assert "which is not there now" in line and "--data_dir=" in line
    evaluate.main([folder, *EVAL, f"--data_dir={moved}"])
    assert json.load(open(os.path.join(folder, "eval.json")))["dataset"] == "synthetic"
    other = make_synthetic(tmp_path / "other" / "synthetic", "--seed=8")          # found by content
    with pytest.raises(UserError, match="another build"):
        evaluate.main([folder, *EVAL, f"--data_dir={other}", "--force"])


def test_relative_paths_are_the_callers(tmp_path):
    """From another directory, OUT= and DATA= land where the user stands, not in the repository."""
    caller = tmp_path / "me"
    caller.mkdir()
    env = dict(os.environ, OUT="out", RESULTS="results", DATA="data/synthetic", KS="1", SEEDS="1", CONTROLS="0",
               PREPARE_ARGS=" ".join(a for a in TINY_SYNTHETIC if not a.startswith("--source")))
    result = subprocess.run(["bash", os.path.join(ROOT, "sweep.sh"), "synthetic", *TINY[:-3],
                             "--token_budget=1500", "--epochs=1"], cwd=caller, env=env, capture_output=True,
                            text=True, timeout=400)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert (caller / "out" / "sweep.log").exists() and (caller / "data" / "synthetic" / "meta.json").exists()
    assert f"{caller}/results/REPORT.md" in result.stdout


def test_another_users_read_only_run_is_still_read(finished, tmp_path, monkeypatch):
    """EACCES injected where this machine runs as root: the lock is taken read-only (flock needs no
    write access), and a finished evaluation is reported as such."""
    run_dir = copy_run(finished, tmp_path)
    real_open = os.open

    def no_write(path, flags, *args):
        if str(path).endswith(".lock") and flags & (os.O_RDWR | os.O_WRONLY):
            raise PermissionError(errno.EACCES, "Permission denied", path)
        return real_open(path, flags, *args)
    monkeypatch.setattr(os, "open", no_write)
    evaluate.main([str(run_dir), *EVAL])                       # no traceback: "already evaluated"


def test_read_only_data_keeps_derived_files_in_the_runs_folder(tiny_synthetic, tmp_path, monkeypatch):
    folder = trained(tiny_synthetic, tmp_path / "out" / "run")
    real_access = os.access

    def access(path, mode):                 # the data folder is not ours to write
        return False if mode == os.W_OK and os.path.samefile(path, tiny_synthetic) else real_access(path, mode)
    monkeypatch.setattr(os, "access", access)
    evaluate.main([folder, *EVAL])
    derived = tmp_path / "out" / ".derived" / Dataset(tiny_synthetic).fingerprint[:16]
    assert (derived / "evalset_n20_s0.npz").exists() and (derived / "references_n20_s0.npz").exists()


# ----------------------------------------------------------------------------- bad values, damaged files

@pytest.mark.parametrize("argv, message", [
    (["--batch_size=-1"], "batch_size=-1"), (["--eval_windows=0"], "eval_windows=0"),
    (["--eval_windows=-5"], "eval_windows=-5"), (["--eval_seed=-1"], "eval_seed=-1")])
def test_evaluate_checks_its_arguments_before_any_file(finished, argv, message):
    line = one_line(run("evaluate.py", finished, *argv))
    assert message in line
    assert not [f for f in os.listdir(os.path.dirname(finished)) if "evalset_n0" in f or "n-5" in f]


@pytest.mark.parametrize("argv, message", [
    (["--synth_vocab=0"], "synth_vocab=0"), (["--synth_vocab=70000"], "synth_vocab=70000"),
    (["--floor=2"], "floor=2"), (["--concentration=-1"], "concentration=-1"),
    (["--split_tokens=0,0,0"], "split_tokens="), (["--seed=-1"], "seed=-1")])
def test_prepare_checks_synthetic_settings(tmp_path, argv, message):
    line = one_line(run("prepare.py", "--source=synthetic", f"--data_dir={tmp_path}/syn", *argv))
    assert message in line and not os.path.exists(tmp_path / "syn")


def test_a_torn_evaluation_is_evaluated_again_and_never_plotted(finished, tmp_path):
    run_dir = copy_run(finished, tmp_path / "out")
    with np.load(os.path.join(run_dir, "eval.npz")) as z:
        arrays = {k: z[k][:5] for k in z.files}                 # an older, smaller eval.npz
    np.savez_compressed(os.path.join(run_dir, "eval.npz"), **arrays)
    runs, skipped = experiments.load_runs(str(tmp_path / "out"))
    assert not runs and "not one evaluation" in skipped[os.path.basename(run_dir)]
    assert evaluate.previous_evaluation(str(run_dir), evaluate_config(), evaluate.torch.device("cpu")) is None


def evaluate_config(*argv):
    from types import SimpleNamespace
    from configurator import config_defaults, configure
    cfg = SimpleNamespace(**configure(config_defaults(vars(evaluate)), [*EVAL, *argv]))
    return cfg


def test_a_path_in_eval_json_is_never_opened(finished, tmp_path):
    run_dir = copy_run(finished, tmp_path)
    ev = json.load(open(os.path.join(run_dir, "eval.json")))
    ev["evalset"]["path"] = "/dev/zero"                          # would hash forever
    json.dump(ev, open(os.path.join(run_dir, "eval.json"), "w"))
    assert evaluate.previous_evaluation(str(run_dir), evaluate_config(), evaluate.torch.device("cpu")) is None


@pytest.mark.parametrize("content", [b"\xff\xfe not utf-8\n", b"[1, 2, 3]\n", b'{"kind": "val"}\n'])
def test_a_damaged_log_line_is_skipped(finished, tmp_path, content):
    run_dir = copy_run(finished, tmp_path / "out")
    with open(os.path.join(run_dir, "log.jsonl"), "ab") as f:
        f.write(content)
    runs, _ = experiments.load_runs(str(tmp_path / "out"))
    assert len(runs) == 1 and all({"kind", "step", "tokens"} <= set(r) for r in runs[0].log)


@pytest.mark.parametrize("name, content", [("eval.json", "[]"), ("eval.json", "{}"), ("config.json", "[]"),
                                           ("done", "[]")])
def test_damaged_run_files_are_named_not_a_traceback(finished, tmp_path, name, content):
    run_dir = copy_run(finished, tmp_path / "out")
    with open(os.path.join(run_dir, name), "w") as f:
        f.write(content)
    runs, skipped = experiments.load_runs(str(tmp_path / "out"))
    assert not runs and os.path.basename(run_dir) in skipped


def test_damaged_meta_json_is_one_line(tmp_path):
    data = make_synthetic(tmp_path / "synthetic")
    meta = json.load(open(os.path.join(data, "meta.json")))
    meta["splits"] = []
    json.dump(meta, open(os.path.join(data, "meta.json"), "w"))
    with pytest.raises(UserError, match="rebuild"):
        Dataset(data)


def test_a_diverged_run_without_a_checkpoint_says_so(tiny_synthetic, tmp_path):
    with pytest.raises(UserError, match="no checkpoint had been saved yet"):
        trained(tiny_synthetic, tmp_path / "run", "--learning_rate=1e30", "--warmup_iters=0")
    with pytest.raises(UserError, match="learning_rate=inf: use a finite positive rate"):
        trained(tiny_synthetic, tmp_path / "run2", "--learning_rate=inf")


def test_a_grid_naming_a_value_twice_is_refused(tmp_path):
    result = subprocess.run(["bash", "sweep.sh", "synthetic"], cwd=ROOT, capture_output=True, text=True,
                            env=dict(os.environ, OUT=str(tmp_path / "out"), DATA=str(tmp_path / "data"),
                                     KS="1 2 1"))
    assert result.returncode == 2 and "names a value twice" in result.stderr


def test_an_unwritable_results_folder_is_one_line(finished, tmp_path, monkeypatch):
    import plot
    out = tmp_path / "out"
    copy_run(finished, out)
    real_open = open

    def no_write(path, mode="r", *args, **kwargs):
        if str(path).startswith(str(tmp_path / "results")) and "w" in mode:
            raise PermissionError(errno.EACCES, "Permission denied", path)
        return real_open(path, mode, *args, **kwargs)
    monkeypatch.setattr("builtins.open", no_write)
    with pytest.raises(UserError, match="cannot write the results to .* choose another folder with --results"):
        plot.main([f"--out={out}", f"--results={tmp_path / 'results'}", "--n_boot=20"])
