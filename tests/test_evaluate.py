"""evaluate.py: per-position model losses, the synthetic references per window, the fixed eval set."""
import json
import os
import shutil

import numpy as np
import pytest
import torch

import evaluate
import train
from configurator import UserError
from harness.data import BLOCK, Dataset, gather_windows
from conftest import make_synthetic
from harness.runs import run_identity

TINY_RUN = ["--n_layer=1", "--n_head=2", "--n_embd=16", "--batch_size=4", "--device=cpu",
            "--cpu_threads=1", "--warmup_iters=2", "--eval_interval=100", "--val_windows=8",
            "--token_budget=2000", "--epochs=1"]
EVAL = ["--eval_windows=40"]


@pytest.fixture(scope="module")
def trained_run(tiny_synthetic, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("runs") / "k2")
    train.main([f"--data_dir={tiny_synthetic}", f"--out_dir={out}", "--k=2", *TINY_RUN])
    evaluate.main([out, *EVAL])
    return out


# ----------------------------------------------------------------------------- learner references
# (the references themselves are tested against brute force in test_references.py)

def test_learner_references_are_saved_and_ordered(trained_run, tiny_synthetic):
    ds = Dataset(tiny_synthetic)
    summary = json.load(open(os.path.join(trained_run, "eval.json")))
    own = summary["components"]
    assert set(summary["learner_alpha"]) == set(own) and all(a > 0 for a in summary["learner_alpha"].values())
    with np.load(os.path.join(trained_run, "eval.npz")) as z:
        saved = {k: z[k] for k in z.files}
    for cat in ds.components:
        entry = summary["categories"][cat]
        shape = (entry["n_windows"], BLOCK)         # up to 40: the tiny test splits hold fewer
        assert saved[f"learner:{cat}"].shape == saved[f"model:{cat}"].shape == shape
        assert saved[f"learner:{cat}"].dtype == np.float32
        assert (f"learner1:{cat}" in saved) == (cat in own)
        assert ("learner1" in entry) == (cat in own)
        assert entry["learner"]["xe_mean"] == pytest.approx(saved[f"learner:{cat}"].mean(), rel=1e-5)
    # on the run's first component: oracle <= learner1 (data scarcity) <= learner (identification)
    first = own[0]
    oracle, learner1, learner = (saved[f"{key}:{first}"].astype(float).mean()
                                 for key in ("oracle", "learner1", "learner"))
    assert oracle <= learner1 + 1e-6 and learner1 <= learner + 1e-6
    assert learner1 - oracle > 0.001              # 1000 tokens do not pin down 8 x 8 transitions


def test_learner1_of_a_mixture_is_the_learner_of_its_control_run(trained_run, tiny_synthetic, tmp_path):
    """The mixture's control run (--arm=control) trains on its first component's documents."""
    config = json.load(open(os.path.join(trained_run, "config.json")))
    first = config["trained_on"]["components"][0]
    control = str(tmp_path / "control")
    train.main([f"--data_dir={tiny_synthetic}", f"--out_dir={control}", "--k=2", *TINY_RUN, "--arm=control"])
    assert json.load(open(os.path.join(control, "config.json")))["trained_on"]["components"] == [first]
    evaluate.main([control, *EVAL])
    mix, ctrl = (np.load(os.path.join(run, "eval.npz")) for run in (trained_run, control))
    np.testing.assert_array_equal(mix[f"learner1:{first}"], ctrl[f"learner:{first}"])
    np.testing.assert_array_equal(ctrl[f"learner:{first}"], ctrl[f"learner1:{first}"])        # K = 1
    alphas = [json.load(open(os.path.join(run, "eval.json")))["learner_alpha"] for run in (trained_run, control)]
    assert alphas[0][first] == alphas[1][first]


def test_an_evaluation_of_another_run_or_damaged_is_redone(trained_run, capsys):
    path = os.path.join(trained_run, "eval.json")
    summary = json.load(open(path))
    del summary["identity"]                      # as written by an older version, or for another run
    json.dump(summary, open(path, "w"))
    evaluate.main([trained_run, *EVAL])
    assert "already evaluated" not in capsys.readouterr().out
    config = json.load(open(os.path.join(trained_run, "config.json")))
    assert json.load(open(path))["identity"] == config["identity"]
    for damaged, name in ((b"{", "eval.json"), (b"PK\x03", "eval.npz")):   # cut short mid-write
        with open(os.path.join(trained_run, name), "wb") as f:
            f.write(damaged)
        evaluate.main([trained_run, *EVAL])
        assert "already evaluated" not in capsys.readouterr().out
    evaluate.main([trained_run, *EVAL])
    assert "already evaluated" in capsys.readouterr().out


def test_an_edit_to_the_evaluation_code_evaluates_again(trained_run, capsys, monkeypatch):
    """evaluate.py edited (its fingerprint changed): the old evaluation is stale, the new one
    records the new fingerprint, and an unchanged rerun trusts it."""
    evaluate.main([trained_run, *EVAL])
    assert "already evaluated" in capsys.readouterr().out
    edited = dict(evaluate.EVALUATION_CODE_NOW, fingerprint="edited")
    monkeypatch.setattr(evaluate, "EVALUATION_CODE_NOW", edited)
    evaluate.main([trained_run, *EVAL])
    assert "already evaluated" not in capsys.readouterr().out
    assert json.load(open(os.path.join(trained_run, "eval.json")))["evaluation_code"] == edited
    evaluate.main([trained_run, *EVAL])
    assert "already evaluated" in capsys.readouterr().out
    monkeypatch.undo()                      # the shared run evaluated by the code as it is, again
    evaluate.main([trained_run, *EVAL])
    assert "already evaluated" not in capsys.readouterr().out


# ----------------------------------------------------------------------------- model losses

def test_per_position_losses_match_the_models_logits(trained_run, tiny_synthetic):
    ds = Dataset(tiny_synthetic)
    with np.load(os.path.join(trained_run, "eval.npz")) as z:
        saved = {k: z[k] for k in z.files}
    _, windows = evaluate.load_evalset(ds, 40, 0)
    first = ds.default_order[0]                     # in the K = 2 mixture whatever the data's order
    starts, docs = windows[first]
    assert np.array_equal(saved[f"doc:{first}"], docs)
    x, y = gather_windows(ds.tokens(first, "test"), starts)
    config = json.load(open(os.path.join(trained_run, "config.json")))["config"]
    model = train.GPT(train.GPTConfig.from_run(config, ds.vocab_size))
    model.load_state_dict(torch.load(os.path.join(trained_run, "ckpt.pt"), weights_only=False)["model"])
    with torch.no_grad():
        logits = model.eval()(torch.from_numpy(x)).double()
    direct = -torch.log_softmax(logits, -1).gather(-1, torch.from_numpy(y)[..., None])[..., 0]
    np.testing.assert_allclose(saved[f"model:{first}"], direct.numpy(), rtol=1e-4, atol=1e-5)
    summary = json.load(open(os.path.join(trained_run, "eval.json")))
    entry = summary["categories"][first]
    assert summary["components"] == ds.default_order[:2]
    np.testing.assert_allclose(entry["xe_t"], direct.numpy().mean(0), rtol=1e-4)
    assert entry["xe_mean_bits"] == pytest.approx(entry["xe_mean"] / np.log(2))
    assert entry["in_mixture"] and not summary["categories"][ds.default_order[2]]["in_mixture"]
    assert {"bayes", "oracle"} <= set(entry) and len(entry["bayes"]["xe_t"]) == BLOCK
    from harness import references         # the references' own values, window by window
    chains, names = ds.chains(), summary["components"]
    index = [list(chains["names"]).index(n) for n in names]
    windows_first = np.concatenate([x, y[:, -1:]], axis=1)
    c = list(chains["names"]).index(first)
    np.testing.assert_allclose(saved[f"oracle:{first}"], references.bayes_losses(
        windows_first, chains["transition"][[c]], chains["stationary"][[c]], np.ones(1)), rtol=1e-5)
    np.testing.assert_allclose(saved[f"bayes:{first}"], references.bayes_losses(
        windows_first, chains["transition"][index], chains["stationary"][index], np.full(2, 0.5)), rtol=1e-5)
    # the model cannot beat the true chain on average over its own components
    assert entry["xe_mean"] > entry["oracle"]["xe_mean"] - 0.05


def test_repeated_evaluation_is_identical(trained_run):
    with np.load(os.path.join(trained_run, "eval.npz")) as z:
        first = {k: z[k] for k in z.files}
    evaluate.main([trained_run, "--force", *EVAL])
    with np.load(os.path.join(trained_run, "eval.npz")) as z:
        second = {k: z[k] for k in z.files}
    assert first.keys() == second.keys()
    assert all(np.array_equal(first[k], second[k]) for k in first)


def test_evaluated_run_is_skipped(trained_run, capsys):
    before = os.path.getmtime(os.path.join(trained_run, "eval.npz"))
    evaluate.main([trained_run, *EVAL])
    assert "already evaluated" in capsys.readouterr().out
    assert os.path.getmtime(os.path.join(trained_run, "eval.npz")) == before


def test_eval_set_is_shared_and_spread_over_documents(tiny_synthetic):
    ds = Dataset(tiny_synthetic)
    path, first = evaluate.load_evalset(ds, 40, 0)
    _, again = evaluate.load_evalset(ds, 40, 0)
    for c in ds.components:
        assert np.array_equal(first[c][0], again[c][0])
        starts, docs = first[c]
        offsets = ds.offsets(c, "test")
        n_docs = len(offsets) - 1
        assert len(np.unique(docs)) == min(n_docs, len(starts))
        assert np.all(starts >= offsets[docs]) and np.all(starts + BLOCK + 1 < offsets[docs + 1])


# ----------------------------------------------------------------------------- bad input

def test_unfinished_run_names_the_command(tiny_synthetic, trained_run, tmp_path):
    out = str(tmp_path / "unfinished")
    train.main([f"--data_dir={tiny_synthetic}", f"--out_dir={out}", *TINY_RUN])
    os.remove(os.path.join(out, "done"))
    with pytest.raises(UserError, match="has not finished training.*python train.py"):
        evaluate.main([out, *EVAL])
    with pytest.raises(UserError, match="not a run folder"):
        evaluate.main([str(tmp_path), *EVAL])
    with pytest.raises(UserError, match="not a run folder"):
        evaluate.main([str(tmp_path / "typo"), *EVAL])
    # in a batch, a bad folder is reported and skipped, the others are still evaluated
    (tmp_path / "sweep.log").write_text("not a run\n")
    with pytest.raises(UserError, match="1 of 2 folders were not evaluated"):
        evaluate.main([str(tmp_path / "sweep.log"), trained_run, *EVAL])
    with pytest.raises(UserError, match="name the run folders"):
        evaluate.main(EVAL)


def test_checkpoint_that_does_not_match_the_data(tiny_synthetic, tmp_path):
    other = make_synthetic(tmp_path / "bigger_vocab", "--synth_vocab=100")
    out = str(tmp_path / "run")
    train.main([f"--data_dir={other}", f"--out_dir={out}", *TINY_RUN])
    config_path = os.path.join(out, "config.json")
    saved = json.load(open(config_path))
    saved["config"]["data_dir"] = tiny_synthetic               # point it at the wrong dataset
    json.dump(saved, open(config_path, "w"))
    with pytest.raises(UserError, match="another build"):
        evaluate.main([out, *EVAL])
    saved["identity"] = run_identity(saved["config"], Dataset(tiny_synthetic).fingerprint,   # even if it
                                     saved["code"]["fingerprint"])
    json.dump(saved, open(config_path, "w"))                                               # claims to match
    with pytest.raises(UserError, match="not the finished run"):
        evaluate.main([out, *EVAL])


def test_eval_set_from_another_dataset_or_damaged_is_drawn_again(tiny_synthetic, tmp_path):
    copy = str(tmp_path / "copy")
    shutil.copytree(tiny_synthetic, copy)
    ds = Dataset(copy)
    path, windows = evaluate.load_evalset(ds, 40, 0)
    arrays = dict(np.load(path))
    arrays["fingerprint"] = np.array("0" * 64)                  # drawn from another dataset
    arrays["start:chain0"] = arrays["start:chain0"][::-1]
    np.savez(path, **arrays)
    again = evaluate.load_evalset(Dataset(copy), 40, 0)[1]
    assert all(np.array_equal(again[c][0], windows[c][0]) for c in windows)
    with open(path, "wb") as f:                                 # cut short
        f.write(b"PK\x03\x04")
    again = evaluate.load_evalset(Dataset(copy), 40, 0)[1]
    assert all(np.array_equal(again[c][0], windows[c][0]) for c in windows)




def test_the_tagged_mixture_uses_its_tag(tiny_synthetic, tmp_path):
    """A tagged mixture (--arm=tagged) told the wrong component predicts worse: the tag is used, not
    ignored; it is scored with the true component, on its own components only."""
    from model import GPT, GPTConfig, batched_losses, logits_batch
    from harness.data import fixed_windows
    from harness.runs import load_checkpoint
    out = str(tmp_path / "tagged")
    train.main([f"--data_dir={tiny_synthetic}", f"--out_dir={out}", *TINY_RUN, "--k=2", "--arm=tagged",
                "--epochs=8"])
    config = json.load(open(os.path.join(out, "config.json")))
    model = GPT(GPTConfig.from_run(config["config"], Dataset(tiny_synthetic).vocab_size))
    model.load_state_dict(load_checkpoint(os.path.join(out, "ckpt.pt"))["model"])
    model.eval()
    ds, names = Dataset(tiny_synthetic), config["trained_on"]["components"]
    autocast = torch.autocast("cpu", enabled=False)
    for right, name in enumerate(names):
        x, y = gather_windows(ds.tokens(name, "test"), fixed_windows(ds, name, "test", 50, seed=0)[0])
        told = [batched_losses(model, x, y, torch.device("cpu"), logits_batch(64), autocast, tag).mean()
                for tag in (right, 1 - right)]
        assert told[1] > told[0] + 0.01, (name, told)
    evaluate.main([out, *EVAL])
    result = json.load(open(os.path.join(out, "eval.json")))
    assert result["arm"] == "tagged" and sorted(result["categories"]) == sorted(names)


def test_a_weighted_runs_references_use_its_weights(tiny_synthetic, tmp_path):
    """--weights=3,1: the Bayes predictor and the learner weigh the run's chains 0.75 / 0.25 (a
    uniform prior would give other numbers), checked against references.py directly."""
    from harness import references
    out = str(tmp_path / "weighted")
    train.main([f"--data_dir={tiny_synthetic}", f"--out_dir={out}", *TINY_RUN, "--k=2", "--weights=3,1"])
    evaluate.main([out, *EVAL])
    saved = json.load(open(os.path.join(out, "config.json")))
    weights = np.array(saved["trained_on"]["weights"])
    assert np.allclose(weights, [0.75, 0.25])
    ds = Dataset(tiny_synthetic)
    chains = ds.chains()
    names = saved["trained_on"]["components"]
    index = [list(chains["names"]).index(n) for n in names]
    counts, alphas = evaluate.learner_counts(out, saved, ds, chains)
    evalset = np.load(os.path.join(tiny_synthetic, "evalset_n40_s0.npz"))
    with np.load(os.path.join(out, "eval.npz")) as z:
        for cat in names:
            x, y = gather_windows(ds.tokens(cat, "test"), evalset[f"start:{cat}"])
            windows = np.concatenate([x, y[:, -1:]], axis=1)
            transition, stationary = chains["transition"][index], chains["stationary"][index]
            bayes = references.bayes_losses(windows, transition, stationary, weights)
            learner = references.learner_losses(windows, counts, alphas, weights)
            np.testing.assert_allclose(z[f"bayes:{cat}"], bayes, rtol=1e-5)
            np.testing.assert_allclose(z[f"learner:{cat}"], learner, rtol=1e-5)
            uniform = references.bayes_losses(windows, chains["transition"][index], chains["stationary"][index],
                                              np.array([0.5, 0.5]))
            assert np.abs(z[f"bayes:{cat}"] - uniform).max() > 1e-3            # the weights matter here
