"""
Run integrity: every number in a run folder comes from the command that claims it. One identity
decides what is the same run; one process at a time per folder; checkpoints load as tensors only;
damaged files are named; bad values are one line.
"""
import contextlib
import glob
import io
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

import evaluate
import train
from configurator import UserError
from conftest import ROOT, make_synthetic

TINY = ["--n_layer=1", "--n_head=2", "--n_embd=16", "--batch_size=4", "--device=cpu", "--cpu_threads=1",
        "--warmup_iters=2", "--log_interval=2", "--eval_interval=50", "--val_windows=8", "--ckpt_interval=4",
        "--token_budget=2000", "--epochs=2", "--k=2"]


def train_run(data_dir, out_root, *extra, capsys=None):
    """Train (or find finished) a run; returns (its folder, what train.py printed)."""
    if capsys:
        capsys.readouterr()
    train.main([f"--data_dir={data_dir}", f"--out_root={out_root}", *TINY, *extra])
    printed = capsys.readouterr().out if capsys else ""
    folder = train_dir(data_dir, out_root, *extra)
    return folder, printed


def train_dir(data_dir, out_root, *extra):
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        train.main([f"--data_dir={data_dir}", f"--out_root={out_root}", *TINY, *extra, "--print_run_dir"])
    return printed.getvalue().strip()


def test_identity_decides_what_is_the_same_run(tiny_synthetic, tmp_path, capsys):
    first, _ = train_run(tiny_synthetic, tmp_path, capsys=capsys)
    # settings that change only speed or logging are the same run: nothing to do
    again, printed = train_run(tiny_synthetic, tmp_path, "--log_interval=3", "--ckpt_interval=7",
                               "--cpu_threads=2", capsys=capsys)
    assert again == first and "already finished" in printed
    # anything that changes the numbers is another run, in its own folder beside the first
    for change in ("--epochs=3", "--learning_rate=2e-3", "--dropout=0.1", "--n_head=1"):
        other, printed = train_run(tiny_synthetic, tmp_path, change, capsys=capsys)
        assert other != first and "already finished" not in printed
    names = sorted(os.path.basename(p) for p in glob.glob(f"{tmp_path}/synthetic_k2_*"))
    assert len(names) == 5 and sum(n.startswith("synthetic_k2_1L-16d-2h_s1337_") for n in names) == 4


def test_a_grids_run_folders_in_one_start_are_the_ones_each_run_names(tiny_synthetic, tmp_path, capsys):
    """sweep.sh asks train.print_run_dirs for its whole grid at once: the same folder as each
    run's own --print_run_dir, and a run it refuses is one `error:` line among the others."""
    grid = [[f"--data_dir={tiny_synthetic}", f"--out_root={tmp_path}", *TINY, f"--k={k}", f"--seed={seed}",
             f"--arm={arm}"] for k, seed, arm in ((1, 1, "mixture"), (2, 1, "tagged"), (2, 2, "control"))]
    one_by_one = []
    for argv in grid:
        capsys.readouterr()
        train.main(argv + ["--print_run_dir"])
        one_by_one.append(capsys.readouterr().out.strip())
    refused = [f"--data_dir={tiny_synthetic}", *TINY, "--k=9"]
    lines = ["\x1f".join(argv) + "\n" for argv in grid[:2] + [refused] + grid[2:]]
    train.print_run_dirs(lines)
    answers = capsys.readouterr().out.splitlines()
    assert answers[:2] + answers[3:] == one_by_one and len(set(one_by_one)) == 3
    assert answers[2].startswith("error: k=9: the default order of")


def test_an_identical_rebuild_of_the_data_keeps_runs_valid_and_another_build_does_not(tmp_path, capsys):
    data = make_synthetic(tmp_path / "synthetic")
    run, _ = train_run(data, tmp_path / "out", capsys=capsys)
    make_synthetic(tmp_path / "synthetic", "--force")                     # the same bytes again
    again, printed = train_run(data, tmp_path / "out", capsys=capsys)
    assert again == run and "already finished" in printed
    evaluate.main([run, "--eval_windows=20", "--device=cpu"])
    make_synthetic(tmp_path / "synthetic", "--force", "--seed=8")         # other data
    with pytest.raises(UserError, match="another build"):
        evaluate.main([run, "--eval_windows=20", "--device=cpu", "--force"])
    assert train_dir(data, tmp_path / "out") != run                       # a new run, a new folder


def test_two_processes_never_share_a_run_folder(tiny_synthetic, tmp_path):
    args = [f"--data_dir={tiny_synthetic}", f"--out_root={tmp_path}", *TINY, "--epochs=100", "--eval_interval=1"]
    first = subprocess.Popen([sys.executable, "train.py", *args], cwd=ROOT, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    folder = train_dir(tiny_synthetic, tmp_path, "--epochs=100", "--eval_interval=1")
    deadline = time.time() + 60
    while not os.path.exists(os.path.join(folder, "log.jsonl")) and time.time() < deadline:
        time.sleep(0.05)
    first.send_signal(signal.SIGSTOP)        # holding its lock, however fast the machine would finish
    try:
        for cmd in (["train.py", *args], ["evaluate.py", folder]):
            second = subprocess.run([sys.executable, *cmd], cwd=ROOT, capture_output=True, text=True, timeout=60)
            lines = second.stderr.strip().splitlines()
            assert second.returncode == 2 and len(lines) == 1, second.stderr
            assert f"in use by another process (PID {first.pid}, train.py)" in lines[0]
    finally:
        first.send_signal(signal.SIGCONT)
        first.terminate()
        first.communicate(timeout=60)


class Payload:
    """What a crafted checkpoint could smuggle in: unpickling it would create a file."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_a_checkpoint_with_code_in_it_is_refused_and_runs_nothing(tiny_synthetic, tmp_path):
    run, _ = train_run(tiny_synthetic, tmp_path)
    marker = tmp_path / "pwned"
    ckpt = torch.load(os.path.join(run, "ckpt.pt"), weights_only=True)
    ckpt["extra"] = Payload(str(marker))
    torch.save(ckpt, os.path.join(run, "ckpt.pt"))
    with pytest.raises(UserError, match="refusing to load .*ckpt.pt"):
        evaluate.main([run, "--eval_windows=20", "--device=cpu"])
    os.remove(os.path.join(run, "done"))
    with pytest.raises(UserError, match="refusing to load .*ckpt.pt"):
        train_run(tiny_synthetic, tmp_path)
    assert not marker.exists()


def test_a_damaged_checkpoint_names_the_file_and_the_command(tiny_synthetic, tmp_path):
    run, _ = train_run(tiny_synthetic, tmp_path)
    os.remove(os.path.join(run, "done"))
    path = os.path.join(run, "ckpt.pt")
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)
    with pytest.raises(UserError, match=f"{path} is damaged .*rm {path}"):
        train_run(tiny_synthetic, tmp_path)
    os.remove(path)
    train_run(tiny_synthetic, tmp_path)                                  # restarted from step 0
    assert json.load(open(os.path.join(run, "done")))["steps"] == 10


def test_another_runs_checkpoint_is_refused_without_config_json(tiny_synthetic, tmp_path):
    mine, _ = train_run(tiny_synthetic, tmp_path)
    theirs, _ = train_run(tiny_synthetic, tmp_path, "--learning_rate=3e-3")
    for name in ("config.json", "done", "ckpt.pt"):
        os.remove(os.path.join(mine, name))
    os.link(os.path.join(theirs, "ckpt.pt"), os.path.join(mine, "ckpt.pt"))   # a stranger's file
    with pytest.raises(UserError, match="belongs to another run"):
        train_run(tiny_synthetic, tmp_path)


def test_a_done_marker_that_the_checkpoint_contradicts_is_not_trusted(tiny_synthetic, tmp_path, capsys):
    run, _ = train_run(tiny_synthetic, tmp_path)
    path = os.path.join(run, "ckpt.pt")
    ckpt = torch.load(path, weights_only=True)
    ckpt["step"] = 8                       # a race's leftover: `done` says 10 steps, the weights say 8
    torch.save(ckpt, path)
    with pytest.raises(UserError, match="not the finished run"):
        evaluate.main([run, "--eval_windows=20", "--device=cpu"])
    _, printed = train_run(tiny_synthetic, tmp_path, capsys=capsys)
    assert "already finished" not in printed and "resuming" in printed
    assert torch.load(path, weights_only=True)["step"] == 10
    evaluate.main([run, "--eval_windows=20", "--device=cpu"])


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o027, 0o640), (0o002, 0o664)])
def test_run_files_follow_the_umask(tiny_synthetic, tmp_path, umask, mode):
    """Another umask, another mode: a hard-coded 0o644 fails two of these."""
    out = str(tmp_path / "run")
    for argv in (["train.py", f"--data_dir={tiny_synthetic}", f"--out_dir={out}", *TINY],
                 ["evaluate.py", out, "--eval_windows=20", "--device=cpu"]):
        subprocess.run([sys.executable, *argv], cwd=ROOT, check=True, capture_output=True, timeout=120,
                       preexec_fn=lambda: os.umask(umask))
    for name in ("config.json", "log.jsonl", "ckpt.pt", "done", "eval.json", "eval.npz"):
        assert os.stat(os.path.join(out, name)).st_mode & 0o777 == mode, name


def test_control_trains_on_exactly_its_mixtures_first_share(tiny_synthetic, tmp_path):
    from harness.data import Dataset
    from harness.mixture import Mixture, training_share
    mix, _ = train_run(tiny_synthetic, tmp_path, "--k=3")
    ctrl, _ = train_run(tiny_synthetic, tmp_path, "--k=3", "--arm=control")
    mix_config, ctrl_config = (json.load(open(os.path.join(r, "config.json"))) for r in (mix, ctrl))
    first = mix_config["config"]["components"][0]
    assert ctrl_config["trained_on"]["tokens"] == {first: mix_config["trained_on"]["tokens"][first]}
    assert ctrl_config["schedule"]["epochs"] == 3 * mix_config["schedule"]["epochs"]
    ctrl_plan, mix_plan = ctrl_config["schedule"], mix_config["schedule"]
    assert abs(ctrl_plan["steps"] - mix_plan["steps"]) <= ctrl_plan["epochs"]
    # token for token: each run's buffer rebuilt from its own saved config, as train.py builds it
    ds = Dataset(tiny_synthetic)
    def trained_on(config):
        cfg = train.SimpleNamespace(**config["config"])
        names, quotas, _, _ = training_share(ds, cfg)
        return Mixture(ds, names, quotas, seed=cfg.seed)
    whole, share = trained_on(mix_config), trained_on(ctrl_config)
    docs = [whole.tokens[s:e].tolist()
            for s, e, c in zip(whole.doc_start, whole.doc_end, whole.doc_comp) if c == 0]
    assert docs == [share.tokens[s:e].tolist() for s, e in zip(share.doc_start, share.doc_end)]
    assert "ctrl" in os.path.basename(ctrl) and "ctrl" not in os.path.basename(mix)


def test_a_mixture_other_than_the_default_order_is_its_own_experiment(tiny_synthetic, tmp_path):
    """--weights=3,1 or --components=a,c beside the default K = 2 run: never another seed of it."""
    from harness.experiments import Run
    default, _ = train_run(tiny_synthetic, tmp_path)
    order = json.load(open(os.path.join(default, "config.json")))["dataset"]["default_order"]
    named, _ = train_run(tiny_synthetic, tmp_path, f"--components={order[0]},{order[1]}")
    assert named == default                                 # the default order named: the same run
    experiments = {}
    for extra in ([], ["--seed=2"], ["--k=3"], ["--arm=control"], ["--weights=3,1"],
                  [f"--components={order[0]},{order[2]}"]):
        run, _ = train_run(tiny_synthetic, tmp_path, *extra)
        config = json.load(open(os.path.join(run, "config.json")))
        as_analysed = Run(os.path.basename(run), run, {}, {}, config, {}, []).experiment
        assert as_analysed == config["experiment"]           # analysis and train: one definition
        experiments[" ".join(extra)] = config["experiment"]
    same = {experiments[key] for key in ("", "--seed=2", "--k=3", "--arm=control")}
    assert len(same) == 1 and len(set(experiments.values())) == 3

    # runs from before config.json recorded the default order: it comes from the data's meta.json
    from harness.experiments import fill_default_orders
    old = []
    for extra in ([], [f"--components={order[0]},{order[2]}"]):
        config = json.load(open(os.path.join(train_dir(tiny_synthetic, tmp_path, *extra), "config.json")))
        del config["dataset"]["default_order"]
        old.append(Run("old", "", {}, {}, config, {}, []))
    fill_default_orders(old, str(tmp_path))
    assert [r.experiment for r in old] == [experiments[""], experiments[f"--components={order[0]},{order[2]}"]]


def test_an_evaluation_is_trusted_only_beside_its_finished_run(tiny_synthetic, tmp_path, capsys):
    run, _ = train_run(tiny_synthetic, tmp_path)
    evaluate.main([run, "--eval_windows=20", "--device=cpu"])
    os.remove(os.path.join(run, "done"))
    with pytest.raises(UserError, match="has not finished training"):        # not "already evaluated"
        evaluate.main([run, "--eval_windows=20", "--device=cpu"])
    open(os.path.join(run, ".tmp-ckpt.ptx1y2"), "wb").write(b"half a checkpoint")   # a kill -9 mid-save
    train_run(tiny_synthetic, tmp_path)                  # finishes the run again, drops the old evaluation
    assert sorted(n for n in os.listdir(run) if not n.endswith(".log")) == \
        [".lock", "ckpt.pt", "config.json", "done", "log.jsonl"]
    evaluate.main([run, "--eval_windows=20", "--device=cpu"])
    assert "already evaluated" not in capsys.readouterr().out


def test_a_damaged_config_json_is_rewritten_from_the_run_itself(tiny_synthetic, tmp_path, capsys):
    run, _ = train_run(tiny_synthetic, tmp_path)
    before = json.load(open(os.path.join(run, "config.json")))
    open(os.path.join(run, "config.json"), "w").write('{"identity": "abc", "conf')      # torn
    _, printed = train_run(tiny_synthetic, tmp_path, capsys=capsys)
    assert "resuming" in printed and "from step 10/10" in printed          # not trained again
    after = json.load(open(os.path.join(run, "config.json")))
    assert after["identity"] == before["identity"] and after["config"] == before["config"]
    assert json.load(open(os.path.join(run, "done")))["steps"] == 10
    _, printed = train_run(tiny_synthetic, tmp_path, capsys=capsys)
    assert "already finished" in printed


def test_the_report_picks_the_experiment_the_current_defaults_make(tiny_synthetic, tmp_path, monkeypatch):
    """Over a larger ablation beside it: the default sweep's experiment is the main one, also after
    an edit to the code, before the edited code has trained anything."""
    from harness import experiments as experiments_module
    from harness.experiments import Run, choose_experiment, group_experiments
    synthetic = os.path.join(ROOT, "config", "synthetic.py")
    quick = ["--epochs=1", "--eval_interval=1000", "--val_windows=4"]      # not in an experiment's identity
    def runs(*extra):
        for k, seed in ((1, 1), (2, 1)) if not extra else ((1, 1), (1, 2), (2, 1), (2, 2)):
            argv = [synthetic, f"--data_dir={tiny_synthetic}", f"--out_root={tmp_path}", f"--k={k}",
                    f"--seed={seed}", *quick[1:], *extra]
            train.main(argv)
            printed = io.StringIO()
            with contextlib.redirect_stdout(printed):
                train.main(argv + ["--print_run_dir"])
            config = json.load(open(os.path.join(printed.getvalue().strip(), "config.json")))
            yield Run(f"k{k}s{seed}{extra}", "", {"source": "synthetic"}, {}, config, {}, [])
    default = list(runs())                                   # config/synthetic.py as it is: 2 runs
    ablation = list(runs(quick[0]))                          # epochs=1: 4 runs
    experiments = group_experiments(default + ablation)
    main, choice = choose_experiment(experiments, "")
    assert choice == "defaults" and main.runs == default and len(experiments) == 2
    monkeypatch.setattr(experiments_module, "code_fingerprint", lambda modules: {"fingerprint": "edited"})
    main, choice = choose_experiment(experiments, "")
    assert choice == "defaults, earlier code" and main.runs == default


def test_a_k_sweep_beyond_the_default_order_is_one_experiment_with_one_mixture_per_k():
    """K = 6, 7 name their components (the default order has five); those that extend it are the
    default sweep; a K cell whose runs extend it differently keeps the mixture most runs share."""
    from harness.experiments import Run, drop_mixed_cells
    from harness.runs import mixture_rule
    order = ["a", "b", "c", "d", "e"]
    assert mixture_rule({"components": order + ["f", "g"], "weights": [1 / 7] * 7}, order) == "default order"
    assert mixture_rule({"components": ["a", "c"], "weights": [0.5, 0.5]}, order) != "default order"
    assert mixture_rule({"components": order + ["f"], "weights": [0.5] + [0.1] * 5}, order) != "default order"

    def run(seed, components):
        config = {"config": {"seed": seed, "k": len(components), "components": components,
                             "weights": [1 / len(components)] * len(components), "epochs": 4},
                  "dataset": {"fingerprint": "data", "default_order": order}}
        ev = {"k": len(components), "seed": seed, "components": components}
        return Run(f"k{len(components)}_s{seed}_{components[-1]}", "", ev, {}, config, {}, [])
    runs = [run(1, order[:3]), run(1, order + ["f"]), run(2, order + ["f"]), run(3, order + ["g"]),
            run(1, order + ["f", "g"])]
    assert len({r.experiment for r in runs}) == 1
    skipped = {}
    kept = drop_mixed_cells(runs, skipped)
    assert [r.name for r in kept] == ["k3_s1_c", "k6_s1_f", "k6_s2_f", "k7_s1_g"]
    assert list(skipped) == ["k6_s3_g"] and "a K cell pools one mixture" in skipped["k6_s3_g"]


def test_runs_scored_another_way_are_left_out_and_named():
    """Windows pair across runs only when one evaluation set, one evaluation code and one precision
    scored them: the most common of each is kept, every other run named with its command."""
    from harness.experiments import Run, drop_other_evalsets, drop_other_evaluations

    def run(name, sha="set1", code="code1", dtype="float32", seed=1):
        config = {"config": {"seed": seed, "k": 1, "components": ["a"], "weights": [1.0]},
                  "dataset": {"fingerprint": "data", "default_order": ["a"]}}
        ev = {"k": 1, "seed": seed, "components": ["a"], "dataset": "data", "evalset": {"sha": sha},
              "evaluation_code": {"fingerprint": code}, "dtype": dtype}
        return Run(name, f"out/{name}", ev, {}, config, {}, [])
    runs = [run("s1"), run("s2", seed=2), run("s3", seed=3, sha="set2"), run("s4", seed=4, dtype="bfloat16"),
            run("s5", seed=5, code="code2")]
    skipped = {}
    kept = drop_other_evaluations(drop_other_evalsets(runs, skipped), skipped)
    assert [r.name for r in kept] == ["s1", "s2"] and set(skipped) == {"s3", "s4", "s5"}
    assert "different evaluation set" in skipped["s3"] and "evaluate.py out/s3 --force" in skipped["s3"]
    assert "in another precision (bfloat16" in skipped["s4"] and "--dtype=float32" in skipped["s4"]
    assert "by other evaluation code" in skipped["s5"]


def test_the_code_fingerprint_is_pinned_across_pythons_and_layouts():
    """How code is fingerprinted is part of every run's identity: a change to it re-identifies every
    run ever trained, so it is pinned (this digest on Python 3.8-3.13, nested f-strings included),
    and layout, comments and docstrings never move it."""
    from harness.runs import source_fingerprint
    source = 'def f(x):\n    """doc"""\n    return g(f"{x!r:>4} {f\'{x}\'}", "y")  # note\n'
    pinned = "cf1281b609779886d959c78ebaf02386ab32656619fce3b77d9396ef6aaf57e5"
    assert source_fingerprint(source) == pinned
    relaid = 'def f(x):\n    """another doc"""\n    return g(f"{x!r:>4} {f\'{x}\'}",\n             "y")\n'
    assert source_fingerprint(relaid) == pinned
    assert source_fingerprint(source.replace('"y"', '"z"')) != pinned


def test_sigint_saves_a_checkpoint_and_exits_130(tiny_synthetic, tmp_path):
    """Ctrl-C in a terminal: the step finishes, a checkpoint is saved, exit status 130 (resuming
    from such a checkpoint: tests/test_train.py's resume tests)."""
    folder = train_dir(tiny_synthetic, tmp_path, "--epochs=100")
    proc = subprocess.Popen([sys.executable, "train.py", f"--data_dir={tiny_synthetic}", f"--out_root={tmp_path}",
                             *TINY, "--epochs=100"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    deadline = time.time() + 60              # inside the loop: a step already logged
    while time.time() < deadline and not (os.path.exists(os.path.join(folder, "log.jsonl"))
                                          and open(os.path.join(folder, "log.jsonl")).read().strip()):
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    stdout, _ = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "checkpoint saved" in stdout
    step = torch.load(os.path.join(folder, "ckpt.pt"), weights_only=True)["step"]
    assert step > 0 and f"stopped by signal at step {step:,}" in stdout


def test_a_trainer_whose_sweep_is_killed_saves_a_checkpoint_and_stops(tiny_synthetic, tmp_path):
    """sweep.sh killed with -9 cannot pass a signal on: its trainers watch SWEEP_PID and stop
    themselves as SIGTERM would stop them (a checkpoint at the step reached, exit status 143)."""
    sweep = subprocess.Popen(["sleep", "300"])               # stands in for sweep.sh
    folder = train_dir(tiny_synthetic, tmp_path, "--epochs=100")
    proc = subprocess.Popen([sys.executable, "train.py", f"--data_dir={tiny_synthetic}", f"--out_root={tmp_path}",
                             *TINY, "--epochs=100"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=dict(os.environ, SWEEP_PID=str(sweep.pid)))
    deadline = time.time() + 60
    while time.time() < deadline and not os.path.exists(os.path.join(folder, "ckpt.pt")):
        time.sleep(0.05)
    sweep.kill()
    sweep.wait()
    stdout, _ = proc.communicate(timeout=60)
    assert proc.returncode == 143, stdout[-2000:]
    step = torch.load(os.path.join(folder, "ckpt.pt"), weights_only=True)["step"]
    assert step > 0 and f"stopped by signal at step {step:,}; checkpoint saved" in stdout


def test_evaluate_holds_its_own_lock(tiny_synthetic, tmp_path):
    from harness.runs import lock_folder
    folder, _ = train_run(tiny_synthetic, tmp_path)
    held = lock_folder(folder, "another evaluate.py")            # noqa: F841 (held)
    result = subprocess.run([sys.executable, "evaluate.py", folder, "--eval_windows=20"], cwd=ROOT,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "in use by another process" in result.stderr
    assert f"PID {os.getpid()}, another evaluate.py" in result.stderr


def test_eval_npz_with_a_pickle_is_never_loaded(tiny_synthetic, tmp_path):
    """np.load without pickles: an object array in a copied eval.npz is refused, not run."""
    from harness.experiments import load_runs
    folder, _ = train_run(tiny_synthetic, tmp_path / "out")
    evaluate.main([folder, "--eval_windows=20", "--device=cpu"])
    marker = tmp_path / "pwned"
    np.savez(os.path.join(folder, "eval.npz"), payload=np.array([Payload(str(marker))], dtype=object))
    runs, skipped = load_runs(str(tmp_path / "out"))
    assert not runs and "unreadable evaluation files" in skipped[os.path.basename(folder)]
    assert not marker.exists()


def test_a_run_without_its_optimizer_state_evaluates_the_same_and_never_resumes_from_it(tiny_synthetic, tmp_path):
    full, _ = train_run(tiny_synthetic, tmp_path / "full")
    slim, _ = train_run(tiny_synthetic, tmp_path / "slim", "--keep_optimizer=False")
    assert os.path.basename(full) == os.path.basename(slim)              # the same run, stored smaller
    assert "optimizer" not in torch.load(os.path.join(slim, "ckpt.pt"), weights_only=True)
    assert os.path.getsize(os.path.join(slim, "ckpt.pt")) < 0.5 * os.path.getsize(os.path.join(full, "ckpt.pt"))
    for run in (full, slim):
        evaluate.main([run, "--eval_windows=20", "--device=cpu"])
    full_xe, slim_xe = (np.load(os.path.join(run, "eval.npz")) for run in (full, slim))
    assert sorted(full_xe.files) == sorted(slim_xe.files)
    assert all(np.array_equal(full_xe[key], slim_xe[key]) for key in full_xe.files)
    os.remove(os.path.join(slim, "done"))                       # finished again without an optimizer
    train_run(tiny_synthetic, tmp_path / "slim", "--keep_optimizer=False")
    assert os.path.exists(os.path.join(slim, "done"))
    ckpt = torch.load(os.path.join(slim, "ckpt.pt"), weights_only=True)
    ckpt["step"] = 5                                            # mid-run: resuming needs the moments
    torch.save(ckpt, os.path.join(slim, "ckpt.pt"))
    os.remove(os.path.join(slim, "done"))
    with pytest.raises(UserError, match="no optimizer state to resume from"):
        train_run(tiny_synthetic, tmp_path / "slim", "--keep_optimizer=False")
