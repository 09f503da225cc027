"""
Per-position cross entropy XE(t), t = 1..100, of trained runs on a fixed evaluation set.

    python evaluate.py out/<run>                  # one run
    python evaluate.py out/*  --force             # every run, re-evaluating finished ones

The evaluation set is drawn once per dataset (N windows of 101 tokens from every category's test
split, spread over as many documents as possible, fixed seed) and saved beside the data, so every
model is scored on the same windows and comparisons across K are paired. On synthetic data each
window is also scored by the exact references of references.py: the Bayes-optimal predictor of
the run's training mixture ("bayes"), the oracle that knows the window's chain ("oracle"), and the
Bayesian learner that knows the model class but only the run's own training tokens ("learner",
with a posterior over the run's chains; "learner1", told the chain, for the run's own components).

Writes out/<run>/eval.npz (per-window, per-position losses in nats, keyed "model:<cat>",
"bayes:<cat>", "oracle:<cat>", "learner:<cat>", "learner1:<cat>", "doc:<cat>") and
out/<run>/eval.json (the summary, with the learner's fitted Dirichlet concentrations; written last).
"""
import os
import time
from types import SimpleNamespace

import numpy as np
import torch

from common import (BLOCK, Dataset, UserError, atomic_path, autocast_for, batched_losses,
                    config_defaults, configure, file_sha, fixed_windows, gather_windows, logits_batch,
                    read_json, resolve_device, resolve_dtype, run_cli, write_json)
from model import GPT, GPTConfig
from references import bayes_losses, fit_alpha, learner_losses, transition_counts
from train import Mixture, resolve_mixture

# -----------------------------------------------------------------------------
eval_windows = 1000         # windows per category in the fixed evaluation set
eval_seed = 0               # the evaluation set's seed (the same for every run)
batch_size = 0              # windows per forward pass; 0 = as many as keep the float32 logits
                            # near 1 GB (about 50 windows at GPT-2's vocabulary, 40k at 64 states)
device = "auto"
cpu_threads = 0             # torch threads on CPU; 0 = torch's default (the CPU sweep uses 1 per run)
dtype = "auto"              # autocast: "auto" = bfloat16 on CUDA, float32 on CPU; losses are float32
                            # either way; "float32" avoids bf16's rounding of the logits (~0.04 at
                            # |logit| 10) for the most careful numbers
force = False               # re-evaluate runs that already have eval.json
# -----------------------------------------------------------------------------
LN2 = np.log(2.0)


def load_evalset(dataset, n, seed):
    """The fixed evaluation windows of a dataset, drawn on first use and saved beside the data."""
    path = os.path.join(dataset.dir, f"evalset_n{n}_s{seed}.npz")
    if os.path.exists(path):
        with np.load(path) as z:
            if str(z["meta_sha"]) != dataset.meta_sha:
                raise UserError(f"{path} was drawn from a different dataset than {dataset.dir}/"
                                f"meta.json; delete it and evaluate again to redraw it")
            return path, {c: (z[f"start:{c}"], z[f"doc:{c}"]) for c in dataset.components}
    windows = {c: fixed_windows(dataset, c, "test", n, seed) for c in dataset.components}
    arrays = {"meta_sha": np.array(dataset.meta_sha)}
    for c, (starts, docs) in windows.items():
        arrays[f"start:{c}"], arrays[f"doc:{c}"] = starts, docs
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)
    return path, windows


# -----------------------------------------------------------------------------
# synthetic data: the exact references (references.py) for every window

def learner_counts(run_dir, saved, dataset, chains):
    """
    What the learner knows: per component of the run, the transition counts of exactly the
    documents the run trained on, and the Dirichlet concentration fitted to them. The documents
    are rebuilt, not redrawn, with train.py's own resolve_mixture and Mixture from the run's saved
    config and seed, so they are the run's token for token. Returns (counts (K, V, V), alphas (K,)).
    """
    cfg = SimpleNamespace(**saved["config"])
    names, quotas, _ = resolve_mixture(dataset, cfg)
    if dict(zip(names, quotas)) != saved["mixture"]["tokens"]:
        raise UserError(f"{run_dir}: its config resolves to the mixture {dict(zip(names, quotas))} "
                        f"but it trained on {saved['mixture']['tokens']}; retrain it with this train.py")
    mixture = Mixture(dataset, names, quotas, cfg.seed)
    counts = transition_counts(mixture.tokens, mixture.doc_start, mixture.doc_end, mixture.doc_comp,
                               len(names), chains["transition"].shape[-1], dataset.eot)
    return counts, fit_alpha(counts)


def synthetic_references(windows, cat, names, weights, chains, counts, alphas):
    """The reference losses (N, T) of one category's windows: bayes, oracle, learner, learner1."""
    index = {n: i for i, n in enumerate(chains["names"])}
    mix, c = [index[n] for n in names], index[cat]
    prior = np.asarray(weights)
    refs = {"bayes": bayes_losses(windows, chains["transition"][mix], chains["stationary"][mix], prior),
            "oracle": bayes_losses(windows, chains["transition"][[c]], chains["stationary"][[c]], np.ones(1)),
            "learner": learner_losses(windows, counts, alphas, prior)}
    if cat in names:                    # told the component: only where the run has its counts
        i = names.index(cat)
        refs["learner1"] = learner_losses(windows, counts[[i]], alphas[[i]], np.ones(1))
    return refs


def load_run(run_dir, dataset_cache, device):
    """Check a run folder, load its model and dataset; one-line errors for what is wrong."""
    config_path, ckpt_path = os.path.join(run_dir, "config.json"), os.path.join(run_dir, "ckpt.pt")
    if not os.path.isdir(run_dir) or not os.path.exists(config_path):
        raise UserError(f"{run_dir} is not a run folder (no config.json); train one with "
                        f"`python train.py config/<config>.py`")
    saved = read_json(config_path)
    if not (os.path.exists(os.path.join(run_dir, "done")) and os.path.exists(ckpt_path)):
        argv = " ".join(saved.get("provenance", {}).get("argv", [])[1:])
        raise UserError(f"{run_dir} has not finished training (no done marker); finish it with "
                        f"`python train.py {argv}`")
    cfg = saved["config"]
    data_dir = cfg["data_dir"]
    if data_dir not in dataset_cache:
        dataset_cache[data_dir] = Dataset(data_dir)
    dataset = dataset_cache[data_dir]
    if saved["dataset"]["meta_sha"] != dataset.meta_sha:
        raise UserError(f"{run_dir} was trained on a different build of {data_dir} (meta.json changed "
                        f"since); evaluate it on the data it was trained on, or retrain it")
    ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=False)
    model_config = GPTConfig(vocab_size=dataset.vocab_size, block_size=cfg["block_size"],
                             n_layer=cfg["n_layer"], n_head=cfg["n_head"], n_embd=cfg["n_embd"],
                             dropout=0.0, bias=cfg["bias"])
    vocab_rows = ckpt["model"]["wte.weight"].shape[0]
    if vocab_rows != model_config.padded_vocab or cfg["block_size"] != BLOCK:
        raise UserError(f"{run_dir}'s checkpoint (vocabulary {vocab_rows} rows, block "
                        f"{cfg['block_size']}) does not match {data_dir} (vocabulary "
                        f"{dataset.vocab_size} -> {model_config.padded_vocab} rows, block {BLOCK}); "
                        f"evaluate it against the dataset it was trained on")
    model = GPT(model_config)
    model.load_state_dict(ckpt["model"])
    model.to(device).eval()
    return saved, dataset, model, ckpt["step"]


def summarise(losses):
    xe_t = losses.mean(axis=0)
    return {"xe_mean": float(xe_t.mean()), "xe_mean_bits": float(xe_t.mean() / LN2),
            "xe_t": [round(float(v), 6) for v in xe_t]}


def evaluate_run(run_dir, cfg, dataset_cache, device):
    eval_json = os.path.join(run_dir, "eval.json")
    if os.path.exists(eval_json) and not cfg.force:
        previous = read_json(eval_json)
        evalset = previous["evalset"]
        same_set = (evalset["n_windows"], evalset["seed"]) == (cfg.eval_windows, cfg.eval_seed)
        # an evaluation from before the learner references existed is redone on synthetic data
        complete = previous.get("source") != "synthetic" or "learner_alpha" in previous
        if same_set and complete:
            print(f"{run_dir}: already evaluated ({eval_json}); --force to redo")
            return previous
    t0 = time.time()
    saved, dataset, model, step = load_run(run_dir, dataset_cache, device)
    evalset_path, evalset = load_evalset(dataset, cfg.eval_windows, cfg.eval_seed)
    names, weights = saved["mixture"]["components"], saved["mixture"]["weights"]
    chains = dataset.chains()
    if chains is not None:
        counts, alphas = learner_counts(run_dir, saved, dataset, chains)
    autocast = autocast_for(device, resolve_dtype(cfg.dtype, device))
    batch_size = cfg.batch_size or logits_batch(model.config.padded_vocab)
    arrays, categories = {}, {}
    for cat in dataset.components:
        starts, docs = evalset[cat]
        x, y = gather_windows(dataset.tokens(cat, "test"), starts)
        losses = batched_losses(model, x, y, device, batch_size, autocast)
        arrays[f"model:{cat}"], arrays[f"doc:{cat}"] = losses, docs
        entry = {"n_windows": len(starts), "n_docs": int(len(np.unique(docs))),
                 "in_mixture": cat in names, **summarise(losses)}
        if chains is not None:
            windows = np.concatenate([x, y[:, -1:]], axis=1)
            refs = synthetic_references(windows, cat, names, weights, chains, counts, alphas)
            for key, ref in refs.items():
                arrays[f"{key}:{cat}"], entry[key] = ref.astype(np.float32), summarise(ref)
        categories[cat] = entry
    with atomic_path(os.path.join(run_dir, "eval.npz")) as tmp:
        with open(tmp, "wb") as f:
            np.savez_compressed(f, **arrays)
    done = read_json(os.path.join(run_dir, "done"))
    result = {"run": os.path.basename(os.path.normpath(run_dir)), "dataset": dataset.name,
              "source": dataset.source, "k": len(names), "components": names, "weights": weights,
              "seed": saved["config"]["seed"], "model_size": saved["model"]["size"],
              "n_params": saved["model"]["n_params"], "token_budget": saved["mixture"]["budget"],
              "tokens_trained": done["tokens"], "checkpoint_step": step,
              "evalset": {"path": evalset_path, "sha": file_sha(evalset_path),
                          "seed": cfg.eval_seed, "n_windows": cfg.eval_windows},
              "categories": categories}
    if chains is not None:
        result["entropy_rate"] = {str(n): float(h) for n, h in zip(chains["names"], chains["entropy_rate"])}
        result["learner_alpha"] = {n: float(a) for n, a in zip(names, alphas)}
    write_json(eval_json, result)
    own = np.mean([categories[n]["xe_mean"] for n in names])
    print(f"{run_dir}: K={len(names)} XE over its own components {own:.4f} nats "
          f"({own / LN2:.4f} bits), {len(categories)} categories x {cfg.eval_windows} windows "
          f"in {time.time() - t0:.1f}s")
    return result


def main(argv):
    runs = [a for a in argv if not a.startswith("--")]
    cfg = SimpleNamespace(**configure(config_defaults(globals()), [a for a in argv if a.startswith("--")]))
    if not runs:
        raise UserError("name the run folders to evaluate, e.g. `python evaluate.py out/<run>` "
                        "(`ls out/` lists them)")
    device = resolve_device(cfg.device)
    if cfg.cpu_threads:
        torch.set_num_threads(cfg.cpu_threads)
    dataset_cache, failed = {}, []
    for run_dir in runs:
        try:
            evaluate_run(run_dir, cfg, dataset_cache, device)
        except UserError as e:
            if len(runs) == 1:
                raise
            print(f"skipped: {e}")        # one bad folder does not stop a batch
            failed.append(run_dir)
    if failed:
        raise UserError(f"{len(failed)} of {len(runs)} folders were not evaluated (see 'skipped:' above)")


if __name__ == "__main__":
    run_cli(main)
