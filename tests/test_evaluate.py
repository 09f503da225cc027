"""evaluate.py: the exact Bayes-optimal reference, per-position model losses, the fixed eval set."""
import itertools
import json
import os
import shutil

import numpy as np
import pytest
import torch

import evaluate
import train
from common import BLOCK, Dataset, UserError, gather_windows
from conftest import make_synthetic

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


# ----------------------------------------------------------------------------- Bayes-optimal

def random_chains(rng, m, v):
    transition = rng.dirichlet(np.full(v, 0.5), size=(m, v)) * 0.9 + 0.1 / v
    stationary = np.stack([np.linalg.matrix_power(p, 200)[0] for p in transition])
    return transition, stationary


def test_bayes_matches_brute_force_enumeration():
    """Expected per-position XE over every sequence of a 2-chain, 3-token mixture, length 5."""
    rng = np.random.default_rng(0)
    transition, stationary = random_chains(rng, 2, 3)
    prior = np.array([0.3, 0.7])
    seqs = np.array(list(itertools.product(range(3), repeat=5)))

    def joint(prefix):            # p(x_0..x_t) under the mixture, by direct summation
        total = 0.0
        for m in range(2):
            p = prior[m] * stationary[m, prefix[0]]
            for a, b in zip(prefix[:-1], prefix[1:]):
                p *= transition[m, a, b]
            total += p
        return total

    p_seq = np.array([joint(s) for s in seqs])
    assert abs(p_seq.sum() - 1) < 1e-12
    brute = np.array([[-np.log(joint(s[:t + 1]) / joint(s[:t])) for t in range(1, 5)] for s in seqs])
    ours = evaluate.bayes_losses(seqs, transition, stationary, prior)
    np.testing.assert_allclose(ours, brute, rtol=1e-10)                       # every sequence
    np.testing.assert_allclose(p_seq @ ours, p_seq @ brute, rtol=1e-10)        # expected XE(t)


@pytest.mark.parametrize("k", [2, 3, 5])
def test_bayes_excess_over_oracle_is_at_most_ln_k(k):
    rng = np.random.default_rng(k)
    transition, stationary = random_chains(rng, k, 6)
    prior = np.full(k, 1 / k)
    excess = []
    for c in range(k):                          # windows sampled from each component
        x = np.empty((200, 31), dtype=np.int64)
        x[:, 0] = rng.choice(6, size=200, p=stationary[c])
        for t in range(1, 31):
            cdf = transition[c][x[:, t - 1]].cumsum(1)
            x[:, t] = (cdf < rng.random(200)[:, None]).sum(1)
        bayes = evaluate.bayes_losses(x, transition, stationary, prior)
        oracle = evaluate.bayes_losses(x, transition[[c]], stationary[[c]], np.ones(1))
        # per window: the summed excess is -log of the posterior of the true chain after x_0
        posterior0 = prior * stationary[:, x[:, 0]].T
        posterior0 /= posterior0.sum(1, keepdims=True)
        window_excess = (bayes - oracle).sum(1)
        assert np.all(window_excess <= -np.log(posterior0[:, c]) + 1e-9)
        excess.append(window_excess)
    assert np.mean(excess) <= np.log(k)
    assert np.mean(excess) > 0                  # identifying the chain costs something


# ----------------------------------------------------------------------------- model losses

def test_per_position_losses_match_the_models_logits(trained_run, tiny_synthetic):
    ds = Dataset(tiny_synthetic)
    with np.load(os.path.join(trained_run, "eval.npz")) as z:
        saved = {k: z[k] for k in z.files}
    _, windows = evaluate.load_evalset(ds, 40, 0)
    starts, docs = windows["chain0"]
    assert np.array_equal(saved["doc:chain0"], docs)
    x, y = gather_windows(ds.tokens("chain0", "test"), starts)
    config = json.load(open(os.path.join(trained_run, "config.json")))["config"]
    model = train.GPT(train.GPTConfig(vocab_size=ds.vocab_size, n_layer=config["n_layer"],
                                      n_head=config["n_head"], n_embd=config["n_embd"]))
    model.load_state_dict(torch.load(os.path.join(trained_run, "ckpt.pt"), weights_only=False)["model"])
    with torch.no_grad():
        logits = model.eval()(torch.from_numpy(x)).double()
    direct = -torch.log_softmax(logits, -1).gather(-1, torch.from_numpy(y)[..., None])[..., 0]
    np.testing.assert_allclose(saved["model:chain0"], direct.numpy(), rtol=1e-4, atol=1e-5)
    summary = json.load(open(os.path.join(trained_run, "eval.json")))
    entry = summary["categories"]["chain0"]
    assert summary["components"] == ds.default_order[:2] and "chain0" in summary["components"]
    np.testing.assert_allclose(entry["xe_t"], direct.numpy().mean(0), rtol=1e-4)
    assert entry["xe_mean_bits"] == pytest.approx(entry["xe_mean"] / np.log(2))
    assert entry["in_mixture"] and not summary["categories"][ds.default_order[2]]["in_mixture"]
    assert {"bayes", "oracle"} <= set(entry) and len(entry["bayes"]["xe_t"]) == BLOCK
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
    with pytest.raises(UserError, match="different build"):
        evaluate.main([out, *EVAL])
    saved["dataset"]["meta_sha"] = Dataset(tiny_synthetic).meta_sha     # even if it claims to match
    json.dump(saved, open(config_path, "w"))
    with pytest.raises(UserError, match="does not match"):
        evaluate.main([out, *EVAL])


def test_eval_set_from_another_dataset_is_refused(tiny_synthetic, trained_run, tmp_path):
    copy = str(tmp_path / "copy")
    shutil.copytree(tiny_synthetic, copy)
    ds = Dataset(copy)
    evaluate.load_evalset(ds, 40, 0)
    meta = json.load(open(os.path.join(copy, "meta.json")))
    meta["created"] = "another day"                             # a rebuilt dataset
    json.dump(meta, open(os.path.join(copy, "meta.json"), "w"))
    with pytest.raises(UserError, match="different dataset"):
        evaluate.load_evalset(Dataset(copy), 40, 0)
