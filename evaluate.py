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

On the categories a run never trained on, "context" is the in-context learner of a new chain
(the model class's prior, fitted once per dataset, and only the window's own transitions): what
the data allow a network that learns a chain in context. The oracle and context losses depend
on the data alone and are computed once per dataset, beside the evaluation set.

Writes out/<run>/eval.npz (per-window, per-position losses in nats, keyed "model:<cat>",
"bayes:<cat>", "oracle:<cat>", "learner:<cat>", "learner1:<cat>", "context:<cat>", "doc:<cat>") and
out/<run>/eval.json (the summary, with the learner's fitted Dirichlet concentrations; written last).
"""
import contextlib
import os
import time
import zipfile
from types import SimpleNamespace

import numpy as np
import torch

from configurator import UserError, check_settings, config_defaults, configure, run_cli
from harness.data import Dataset, file_sha, fixed_windows, gather_windows
from harness.mixture import Mixture, training_share
from model import (GPT, GPTConfig, autocast_for, batched_losses, logits_batch, resolve_device,
                   resolve_dtype)
from harness.references import (bayes_losses, fit_alpha, fit_shared_alpha, in_context_losses, learner1_losses,
                                learner_losses, transition_counts)
from harness.runs import (EVALUATION_CODE, atomic_path, code_fingerprint, experiment_identity,
                          full_disk_is_one_line, load_checkpoint, lock_folder, read_json, read_run_file,
                          run_arm, run_identity, stop_with_sweep, trained_on, write_json)

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
data_dir = ""               # where the run's data is now, if it moved (found by content, not path:
                            # its fingerprint must be the run's); "" = the path in its config.json
# -----------------------------------------------------------------------------
LN2 = np.log(2.0)
EVALUATION_CODE_NOW = code_fingerprint(EVALUATION_CODE)     # an evaluation is redone when it changes


def derived_name(kind, n, seed):
    """The file name of the evaluation set ("evalset") or its per-dataset references ("references")."""
    return f"{kind}_n{n}_s{seed}.npz"


def derived_folder(run_dir, fingerprint):
    """The runs folder's place for files derived from the data with this fingerprint."""
    return os.path.join(os.path.dirname(os.path.abspath(run_dir)), ".derived", str(fingerprint)[:16])


def derived_path(dataset, run_dir, name):
    """Where a file derived from a dataset alone lives: beside the data when that folder is ours to
    write, else in the runs folder, keyed by the data's fingerprint (read-only or shared data)."""
    if run_dir is None or os.access(dataset.dir, os.W_OK):
        return os.path.join(dataset.dir, name)
    folder = derived_folder(run_dir, dataset.fingerprint)
    os.makedirs(folder, exist_ok=True)
    return os.path.join(folder, name)


def load_evalset(dataset, n, seed, run_dir=None):
    """The fixed evaluation windows of a dataset, drawn on first use and saved (derived_path)."""
    path = derived_path(dataset, run_dir, derived_name("evalset", n, seed))
    try:
        with np.load(path) as z:
            if str(z["fingerprint"]) == dataset.fingerprint:
                return path, {c: (z[f"start:{c}"], z[f"doc:{c}"]) for c in dataset.components}
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        pass          # missing, damaged, or drawn from other data: derived, so drawn again
    windows = {c: fixed_windows(dataset, c, "test", n, seed) for c in dataset.components}
    arrays = {"fingerprint": np.array(dataset.fingerprint)}
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
    are rebuilt, not redrawn, with train.py's own training_share and Mixture from the run's saved
    config and seed, so they are the run's token for token. Returns (counts (K, V, V), alphas (K,)).
    """
    cfg = SimpleNamespace(**saved["config"])
    names, quotas, _, _ = training_share(dataset, cfg)
    if dict(zip(names, quotas)) != trained_on(saved)["tokens"]:
        raise UserError(f"{run_dir}: its config resolves to the mixture {dict(zip(names, quotas))} "
                        f"but it trained on {trained_on(saved)['tokens']}; retrain it with this train.py")
    mixture = Mixture(dataset, names, quotas, cfg.seed)
    counts = transition_counts(mixture.tokens, mixture.doc_start, mixture.doc_end, mixture.doc_comp,
                               len(names), chains["transition"].shape[-1], dataset.eot)
    return counts, fit_alpha(counts)


def dataset_references(dataset, evalset, path, evalset_sha, chains):
    """
    What depends on the data alone, computed once per dataset and evaluation set and saved beside
    the set: each category's oracle losses and its in-context learner's ("context": a chain learned
    from the window alone, references.in_context_losses), and that learner's concentration, fitted
    by maximum marginal likelihood on the train split of the default order's first five chains
    (those a K = 1..5 sweep trains on; the same prior for every run and K). Saved at `path`, valid
    while the evaluation set is the one with `evalset_sha`.
    """
    with contextlib.suppress(OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        with np.load(path) as z:
            if str(z["evalset_sha"]) == evalset_sha:
                return {k: z[k] for k in z.files}
    vocab = chains["transition"].shape[-1]
    counts = []
    for name in dataset.default_order[:5]:
        offsets = dataset.offsets(name, "train")
        counts.append(transition_counts(dataset.tokens(name, "train"), offsets[:-1], offsets[1:],
                                        np.zeros(len(offsets) - 1, dtype=np.int64), 1, vocab, dataset.eot)[0])
    alpha = fit_shared_alpha(np.stack(counts))
    arrays = {"evalset_sha": np.array(evalset_sha), "alpha": np.array(alpha)}
    index = {n: i for i, n in enumerate(chains["names"])}
    for cat in dataset.components:
        windows = evalset_windows(dataset, evalset, cat)
        c = index[cat]
        arrays[f"oracle:{cat}"] = bayes_losses(windows, chains["transition"][[c]], chains["stationary"][[c]],
                                               np.ones(1)).astype(np.float32)
        arrays[f"context:{cat}"] = in_context_losses(windows, vocab, alpha).astype(np.float32)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)
    return arrays


def evalset_windows(dataset, evalset, cat):
    """The evaluation windows of a category as (N, 101) token ids."""
    x, y = gather_windows(dataset.tokens(cat, "test"), evalset[cat][0])
    return np.concatenate([x, y[:, -1:]], axis=1)


def synthetic_references(windows, cat, names, weights, chains, counts, alphas, per_dataset):
    """The reference losses (N, T) of one category's windows: bayes, oracle, learner, learner1 (the
    run's own categories), context (the others: chains the run never saw)."""
    index = {n: i for i, n in enumerate(chains["names"])}
    mix = [index[n] for n in names]
    prior = np.asarray(weights)
    refs = {"bayes": bayes_losses(windows, chains["transition"][mix], chains["stationary"][mix], prior),
            "oracle": per_dataset[f"oracle:{cat}"], "learner": learner_losses(windows, counts, alphas, prior)}
    if cat in names:                    # told the component: only where the run has its counts
        i = names.index(cat)
        refs["learner1"] = learner1_losses(windows, counts[i], alphas[i])
    else:
        refs["context"] = per_dataset[f"context:{cat}"]
    return refs


def load_run(run_dir, dataset_cache, device, data_dir=""):
    """Check a run folder, load its model and dataset; one-line errors for what is wrong."""
    paths = {name: os.path.join(run_dir, name) for name in ("config.json", "done", "ckpt.pt")}
    if not os.path.isdir(run_dir) or not os.path.exists(paths["config.json"]):
        raise UserError(f"{run_dir} is not a run folder (no config.json); train one with "
                        f"`python train.py config/<config>.py`")
    saved = read_run_file(paths["config.json"], run_dir)
    done = read_run_file(paths["done"], run_dir, required=False) if os.path.exists(paths["done"]) else None
    if done is None or not os.path.exists(paths["ckpt.pt"]):
        argv = " ".join(saved.get("provenance", {}).get("argv", [])[1:])
        raise UserError(f"{run_dir} has not finished training (no done marker); finish it with "
                        f"`python train.py {argv}`")
    cfg = saved["config"]
    where = data_dir or cfg["data_dir"]
    if not os.path.exists(os.path.join(where, "meta.json")):
        raise UserError(f"{run_dir} was trained on data at {where}, which is not there now; if it moved, "
                        f"point to it: `python evaluate.py {run_dir} --data_dir=<where it is now>`")
    if where not in dataset_cache:
        dataset_cache[where] = Dataset(where)
    dataset = dataset_cache[where]
    if run_identity(cfg, dataset.fingerprint, saved.get("code", {}).get("fingerprint")) != saved.get("identity"):
        raise UserError(f"{run_dir} was trained on another build of {where} (or its config.json was edited); "
                        f"evaluate it on the data it was trained on (--data_dir=...), or train it again")
    ckpt = load_checkpoint(paths["ckpt.pt"])
    if ckpt.get("identity") != saved["identity"] or ckpt["step"] != done.get("steps"):
        raise UserError(f"{run_dir}: its checkpoint (step {ckpt['step']}) is not the finished run that "
                        f"`done` describes (step {done.get('steps')}); delete `done` and run train.py "
                        f"again to finish the run")
    model = GPT(GPTConfig.from_run({**cfg, "dropout": 0.0}, dataset.vocab_size))
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as e:
        raise UserError(f"{run_dir}'s checkpoint does not fit its config ({str(e).splitlines()[0][:120]}); "
                        f"train the run again")
    model.to(device).eval()
    return saved, done, dataset, model, ckpt["step"]


def summarise(losses):
    xe_t = losses.mean(axis=0)
    return {"xe_mean": float(xe_t.mean()), "xe_mean_bits": float(xe_t.mean() / LN2),
            "xe_t": [round(float(v), 6) for v in xe_t]}


def previous_evaluation(run_dir, cfg, device):
    """The run's eval.json if it is complete and still valid: the same run (identity), finished
    (its `done` names the step evaluated), the same evaluation code, set and precision, and the
    eval.npz it was written with (one unit: a torn pair is evaluated again). Paths in eval.json
    are never opened as given: the evaluation set must be where this evaluation would put it."""
    try:
        previous = read_json(os.path.join(run_dir, "eval.json"))
        saved = read_json(os.path.join(run_dir, "config.json"))
        done = read_json(os.path.join(run_dir, "done"))
        npz_sha = file_sha(os.path.join(run_dir, "eval.npz"))
        evalset = previous.get("evalset", {})
        name = derived_name("evalset", cfg.eval_windows, cfg.eval_seed)
        expected = {os.path.join(cfg.data_dir or saved["config"]["data_dir"], name),
                    os.path.join(derived_folder(run_dir, saved.get("dataset", {}).get("fingerprint", "")), name)}
        same = (previous.get("identity") == saved.get("identity") and previous.get("npz_sha") == npz_sha
                and previous.get("evaluation_code") == EVALUATION_CODE_NOW          # evaluate.py edited: redo
                and done.get("steps") == previous.get("steps") == previous.get("checkpoint_step")
                and (evalset.get("n_windows"), evalset.get("seed")) == (cfg.eval_windows, cfg.eval_seed)
                and previous.get("dtype") == resolve_dtype(cfg.dtype, device)
                and evalset.get("path") in expected and os.path.isfile(evalset["path"])
                and file_sha(evalset["path"]) == evalset.get("sha"))
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        return None
    return previous if same else None


def score(model, dataset, evalset, evalset_sha, saved, run_dir, cfg, device):
    """Every category's per-window, per-position losses (a tagged model: its own categories, told
    the component), with the exact references on synthetic data. Returns (arrays, summaries, extra)."""
    names, weights = trained_on(saved)["components"], trained_on(saved)["weights"]
    chains, extra = dataset.chains(), {}
    if chains is not None:
        counts, alphas = learner_counts(run_dir, saved, dataset, chains)
        path = derived_path(dataset, run_dir, derived_name("references", cfg.eval_windows, cfg.eval_seed))
        per_dataset = dataset_references(dataset, evalset, path, evalset_sha, chains)
        extra = {"entropy_rate": {str(n): float(h) for n, h in zip(chains["names"], chains["entropy_rate"])},
                 "learner_alpha": {n: float(a) for n, a in zip(names, alphas)},
                 "context_alpha": float(per_dataset["alpha"])}
    autocast = autocast_for(device, resolve_dtype(cfg.dtype, device))
    batch_size = cfg.batch_size or logits_batch(model.config.padded_vocab)
    arrays, categories = {}, {}
    tagged = model.tag is not None          # told the component: scored on its own components only
    for cat in names if tagged else dataset.components:
        starts, docs = evalset[cat]
        x, y = gather_windows(dataset.tokens(cat, "test"), starts)
        losses = batched_losses(model, x, y, device, batch_size, autocast, names.index(cat) if tagged else None)
        arrays[f"model:{cat}"], arrays[f"doc:{cat}"] = losses, docs
        entry = {"n_windows": len(starts), "n_docs": int(len(np.unique(docs))),
                 "in_mixture": cat in names, **summarise(losses)}
        if chains is not None:
            windows = np.concatenate([x, y[:, -1:]], axis=1)
            refs = synthetic_references(windows, cat, names, weights, chains, counts, alphas, per_dataset)
            for key, ref in refs.items():
                arrays[f"{key}:{cat}"], entry[key] = ref.astype(np.float32), summarise(ref)
        categories[cat] = entry
    return arrays, categories, extra


def write_evaluation(run_dir, arrays, result):
    """eval.npz, then eval.json naming its sha: one unit (a kill between the two leaves a pair that
    previous_evaluation and plot see as torn). A full disk is one line; nothing else changes."""
    with full_disk_is_one_line(f"no space left on the device writing {run_dir}'s evaluation; free some space "
                               f"and run the same command (the run itself is untouched)"):
        with atomic_path(os.path.join(run_dir, "eval.npz")) as tmp:
            with open(tmp, "wb") as f:
                np.savez_compressed(f, **arrays)
        result["npz_sha"] = file_sha(os.path.join(run_dir, "eval.npz"))
        write_json(os.path.join(run_dir, "eval.json"), result)


def evaluate_run(run_dir, cfg, dataset_cache, device):
    lock = lock_folder(run_dir, "evaluate.py") if os.path.isdir(run_dir) else None   # noqa: F841
    eval_json = os.path.join(run_dir, "eval.json")
    previous = None if cfg.force else previous_evaluation(run_dir, cfg, device)
    if previous is not None:
        print(f"{run_dir}: already evaluated ({eval_json}); --force to redo")
        return previous
    t0 = time.time()
    saved, done, dataset, model, step = load_run(run_dir, dataset_cache, device, cfg.data_dir)
    evalset_path, evalset = load_evalset(dataset, cfg.eval_windows, cfg.eval_seed, run_dir)
    evalset_sha = file_sha(evalset_path)
    arrays, categories, extra = score(model, dataset, evalset, evalset_sha, saved, run_dir, cfg, device)
    config, names = saved["config"], trained_on(saved)["components"]
    result = {"run": os.path.basename(os.path.normpath(run_dir)), "identity": saved["identity"],
              "experiment": experiment_identity(config, dataset.fingerprint, dataset.default_order,
                                                saved.get("code", {}).get("fingerprint")),
              "evaluation_code": EVALUATION_CODE_NOW,
              "dataset": dataset.name, "source": dataset.source,
              "k": config["k"], "arm": run_arm(config), "k_mixture": config["components"],
              "components": names, "weights": trained_on(saved)["weights"], "seed": config["seed"],
              "model_size": saved["model"]["size"], "n_params": saved["model"]["n_params"],
              "token_budget": int(sum(trained_on(saved)["tokens"].values())),
              "tokens_trained": done["tokens"], "checkpoint_step": step, "steps": done["steps"],
              "dtype": resolve_dtype(cfg.dtype, device),
              "evalset": {"path": evalset_path, "sha": evalset_sha, "seed": cfg.eval_seed,
                          "n_windows": cfg.eval_windows},
              "categories": categories, **extra}
    write_evaluation(run_dir, arrays, result)
    own = np.mean([categories[n]["xe_mean"] for n in names])
    kind = "" if result["arm"] == "mixture" else f" {result['arm']}"
    counts = sorted({c["n_windows"] for c in categories.values()})
    windows = f"{counts[0]}" if len(counts) == 1 else f"{counts[0]}-{counts[-1]}"
    print(f"{run_dir}: K={config['k']}{kind} XE over its own components {own:.4f} nats "
          f"({own / LN2:.4f} bits), {len(categories)} categories x {windows} windows in {time.time() - t0:.1f}s")
    return result


def main(argv):
    runs = [a for a in argv if not a.startswith("--")]
    cfg = SimpleNamespace(**configure(config_defaults(globals()), [a for a in argv if a.startswith("--")]))
    check_settings(cfg, [(cfg.eval_windows >= 1, "eval_windows", "use at least 1 window per category"),
                         (cfg.eval_seed >= 0, "eval_seed", "use a seed >= 0"),
                         (cfg.batch_size >= 0, "batch_size", "use a positive number, or 0 for the default"),
                         (cfg.cpu_threads >= 0, "cpu_threads", "use a positive number, or 0 for the default")])
    if not runs:
        raise UserError("name the run folders to evaluate, e.g. `python evaluate.py out/<run>` "
                        "(`ls out/` lists them)")
    device = resolve_device(cfg.device)
    stop_with_sweep()
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
