"""
Prepare the per-component token files that every other script reads.

    python prepare.py                                   # arXiv (ccdv/arxiv-classification, no_ref)
    python prepare.py --data_files=path/to/parquet_dir  # the same schema from local files
    python prepare.py --source=synthetic                # random ergodic Markov chains, no network

Output, one dataset per folder (built in a temporary folder and renamed into place at the end):

    data/<dataset>/meta.json                  written last; readers check files against it
    data/<dataset>/stats.json                 docs/tokens per component and split, default order
    data/<dataset>/<component>/<split>.bin    uint16 tokens, every document followed by EOT
    data/<dataset>/<component>/<split>.idx    int64 document start offsets (n_docs + 1)
    data/<dataset>/chains.npz                 synthetic only: the chains, for Bayes-optimal XE
"""
import contextlib
import fcntl
import glob
import os
import shutil
import sys
import tempfile
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from configurator import UserError, check_settings, config_defaults, configure, run_cli
from harness.data import SPLITS, Dataset, content_fingerprint, default_order, replacing_lock
from harness.references import stationary_distribution
from harness.runs import DIR_MODE, provenance, write_json

# -----------------------------------------------------------------------------
# config (module globals are the defaults; override with a config file or --key=value)
source = "arxiv"            # "arxiv" or "synthetic"
data_dir = ""               # output folder; default data/arxiv or data/synthetic
force = False               # rebuild even if data_dir already holds a complete dataset
seed = 1337
# arxiv
hf_repo = "ccdv/arxiv-classification"
hf_config = "no_ref"        # "default" keeps category strings like "cs.PL" in the text: a leak
data_files = ""             # local copy: a folder with train*/validation*/test* parquet or jsonl files,
                            # or "train=a.parquet,validation=b.jsonl,test=c.parquet"
categories = []             # restrict to these categories (default: all 11)
tokenizer = "gpt2"          # tiktoken encoding; r50k_base has identical ranks and works offline
num_proc = 0                # tokenizer threads; 0 = all cores
batch_docs = 256            # documents read from the dataset at a time
# synthetic
n_components = 8            # number of chains (up to 11): the demo's K = 1..5 leaves three unseen
synth_vocab = 48            # chain states; EOT is token synth_vocab
concentration = 0.03        # Dirichlet concentration of each transition row (small = peaked rows)
floor = 0.02                # uniform mixing, so every transition is possible
doc_tokens = (1000, 4000)   # document length range (tokens, before EOT)
split_tokens = (150_000, 20_000, 150_000)   # approximate tokens per component: train, val, test
# Why 48 states, 0.03, 150k (issue 9): the 2-layer demo model identifies a chain from token
# frequencies, hardly from transitions. With 64 states and 0.1 that alone leaves 0.30 nats above
# Bayes at K = 5, and the model stayed 0.47+ above the ideal learner whatever its size or training.
# These peakier chains are identified faster from frequencies (0.10 above Bayes) and keep the ideal
# effects visible (Bayes identification area 1.41 nats at K = 5, learner data scarcity 0.022 nats,
# entropy rates 1.31-1.43 nats); the model gets within 0.12-0.13 nats of the learner at K = 5 and
# 0.004 at K = 1. Half the train tokens halves an epoch's cost. Numbers: BENCHMARKS.md.
# -----------------------------------------------------------------------------
HF_SPLITS = {"train": "train", "val": "validation", "test": "test"}
ARXIV_LABELS = ["math.AC", "cs.CV", "cs.AI", "cs.SY", "math.GR", "cs.CE", "cs.PL",
                "cs.IT", "cs.DS", "cs.NE", "math.ST"]   # ClassLabel order of ccdv/arxiv-classification


class SplitWriter:
    """Streams one component's split to <split>.bin / .idx, one document at a time."""

    def __init__(self, folder, split):
        os.makedirs(folder, exist_ok=True)
        self.bin = open(os.path.join(folder, f"{split}.bin"), "wb")
        self.offsets = [0]

    def add(self, tokens):
        tokens = np.asarray(tokens, dtype=np.uint16)
        self.bin.write(tokens.tobytes())
        self.offsets.append(self.offsets[-1] + len(tokens))

    def close(self):
        self.bin.close()
        idx_path = self.bin.name[:-4] + ".idx"
        np.asarray(self.offsets, dtype=np.int64).tofile(idx_path)
        return {"docs": len(self.offsets) - 1, "tokens": self.offsets[-1],
                "bin_bytes": 2 * self.offsets[-1], "idx_bytes": 8 * len(self.offsets)}


# -----------------------------------------------------------------------------
# arXiv: one loading call (hub or local files), then the same tokenizing path

def resolve_data_files(spec):
    """Local files in the dataset's schema: a folder (split by file name) or split=pattern pairs."""
    if "=" in spec:
        files = dict(part.split("=", 1) for part in spec.split(",") if part)
        files = {k.strip(): sorted(glob.glob(v.strip())) for k, v in files.items()}
    elif os.path.isdir(spec):
        files = {}
        for hf_split, names in (("train", ["train"]), ("validation", ["validation", "val"]),
                                ("test", ["test"])):
            found = []
            for name in names:
                for ext in ("parquet", "jsonl", "json"):    # this folder only: a hub snapshot
                    found += glob.glob(os.path.join(spec, f"{name}*.{ext}"))   # has two configs
            files[hf_split] = sorted(set(found))
    else:
        raise UserError(f"--data_files={spec}: not a folder, nor 'train=...,validation=...,test=...'")
    empty = [p for ps in files.values() for p in ps if os.path.getsize(p) == 0]
    if empty:
        raise UserError(f"--data_files={spec}: {empty[0]} is empty (0 bytes); replace it with the "
                        f"complete file")
    missing = [s for s in HF_SPLITS.values() if not files.get(s)]
    if missing:
        raise UserError(f"--data_files={spec}: no files for split(s) {', '.join(missing)}; "
                        f"expected train*/validation*/test* .parquet or .jsonl files")
    exts = {os.path.splitext(p)[1] for ps in files.values() for p in ps}
    if len(exts) != 1:
        raise UserError(f"--data_files={spec}: mixed file types {sorted(exts)}; use one format")
    builder = "parquet" if exts == {".parquet"} else "json"
    return builder, files


def load_arxiv(cfg):
    """Returns {hf_split: datasets.Dataset}. The hub and a local copy differ only in this call."""
    import datasets
    if cfg.data_files:
        builder, files = resolve_data_files(cfg.data_files)
        try:
            loaded = datasets.load_dataset(builder, data_files=files)
        except Exception as e:              # a damaged file, invalid UTF-8, a schema that differs
            raise UserError(f"could not read --data_files={cfg.data_files} ({type(e).__name__}: "
                            f"{(str(e).splitlines() or [''])[0][:160]}); check that every file is "
                            f"complete {builder} with `text` and `label` columns")
        origin = {"data_files": files}
    else:
        import huggingface_hub
        datasets.logging.set_verbosity_error()      # one clear line below, not the hub's noise
        huggingface_hub.utils.logging.set_verbosity_error()
        try:
            loaded = datasets.load_dataset(cfg.hf_repo, cfg.hf_config)
        except Exception as e:
            raise UserError(f"could not load {cfg.hf_repo} ({cfg.hf_config}) from the Hugging Face "
                            f"hub ({type(e).__name__}: {str(e).splitlines()[0][:120]}); with a local "
                            f"copy in the same schema run `python prepare.py --data_files=<folder "
                            f"with train/validation/test parquet or jsonl>`")
        origin = {"hf_repo": cfg.hf_repo, "hf_config": cfg.hf_config,
                  "cache_files": [f["filename"] for ds in loaded.values() for f in ds.cache_files]}
    for split, ds in loaded.items():
        missing = {"text", "label"} - set(ds.column_names)
        if missing:
            raise UserError(f"split '{split}' has no column(s) {sorted(missing)} (has "
                            f"{ds.column_names}); the schema is text (string) and label")
    return loaded, origin


def label_names(ds):
    names = getattr(ds.features["label"], "names", None)
    return list(names) if names else ARXIV_LABELS


def to_category(label, names):
    """The category of a label, or None for a label that names none (-1, the `datasets`
    convention for "no label", NaN, an id out of range, an unknown name): never a guess."""
    if isinstance(label, str):
        return label if label in names else None
    if isinstance(label, (int, np.integer)) and 0 <= label < len(names):
        return names[int(label)]
    if isinstance(label, float) and label.is_integer() and 0 <= label < len(names):
        return names[int(label)]
    return None


def ordered_map(pool, fn, items, inflight):
    """pool.map in input order with at most `inflight` tasks pending (bounded memory)."""
    pending = deque()
    for item in items:
        pending.append(pool.submit(fn, item))
        if len(pending) >= inflight:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()


def encode_document(enc, text):
    """One document's uint16 tokens, EOT appended. Runs in worker threads: tiktoken releases the
    GIL. Special-token strings in the text are ordinary text (as encode_ordinary does)."""
    return np.append(enc.encode_to_numpy(text, disallowed_special=()), enc.eot_token).astype(np.uint16)


def tokenize_split(ds, split, names, wanted, enc, pool, threads, cfg, out):
    """One split's documents, tokenized in order through the pool and written per category.
    Documents without a category (see to_category) or without text are left out and counted."""
    from tqdm import tqdm
    writers = {c: SplitWriter(os.path.join(out, c), split) for c in wanted}
    left_out = {"no valid label": 0, "no text": 0}
    bar = tqdm(total=len(ds), desc=f"tokenize {split}", unit="doc", file=sys.stderr, disable=None)

    def documents():
        for batch in ds.iter(batch_size=cfg.batch_docs):
            for text, label in zip(batch["text"], batch["label"]):
                bar.update(1)
                category = to_category(label, names)
                if category is None or not isinstance(text, str):
                    left_out["no valid label" if category is None else "no text"] += 1
                elif category in writers:
                    yield category, text
    # documents stream through one pool in order, with no barrier between batches: the main
    # thread only writes, and the whole corpus is never in memory
    try:
        for c, tokens in ordered_map(pool, lambda item: (item[0], encode_document(enc, item[1])),
                                     documents(), inflight=4 * threads):
            writers[c].add(tokens)
    except UnicodeDecodeError as e:
        raise UserError(f"split '{split}' holds text that is not valid UTF-8 ({e.reason} at byte "
                        f"{e.start}); re-export the files as UTF-8")
    bar.close()
    if any(left_out.values()):
        print(f"note: {split}: left out " + ", ".join(f"{n:,} document(s) with {why}"
                                                     for why, n in left_out.items() if n))
    return {c: w.close() for c, w in writers.items()}


def tokenize_arxiv(cfg, out):
    import tiktoken
    if cfg.data_files:
        resolve_data_files(cfg.data_files)  # cheap checks first: bad paths, then the tokenizer,
    try:                                    # then the (1 GB, for the hub) load
        enc = tiktoken.get_encoding(cfg.tokenizer)
    except Exception as e:
        raise UserError(f"tiktoken encoding '{cfg.tokenizer}' unavailable ({e}); offline, set "
                        f"TIKTOKEN_CACHE_DIR to a cache holding it or use --tokenizer=r50k_base")
    if enc.n_vocab > 65536:
        raise UserError(f"tokenizer '{cfg.tokenizer}' has {enc.n_vocab:,} tokens, more than uint16 "
                        f"holds; use a GPT-2-sized one (--tokenizer=gpt2 or r50k_base)")
    loaded, origin = load_arxiv(cfg)
    eot = enc.eot_token
    names = label_names(loaded["train"])
    wanted = list(cfg.categories) or names
    unknown = [c for c in wanted if c not in names]
    if unknown:
        raise UserError(f"unknown categor{'y' if len(unknown) == 1 else 'ies'} "
                        f"{', '.join(unknown)}; valid: {', '.join(names)}")

    threads = cfg.num_proc or os.cpu_count()
    splits = {c: {} for c in wanted}
    with ThreadPoolExecutor(threads) as pool:
        for split, hf_split in HF_SPLITS.items():
            written = tokenize_split(loaded[hf_split], split, names, wanted, enc, pool, threads, cfg, out)
            for c, info in written.items():
                splits[c][split] = info
    # a local sample may hold only some categories: keep those with documents in every split
    empty = [c for c in wanted if any(splits[c][s]["docs"] == 0 for s in SPLITS)]
    if empty and cfg.categories:
        raise UserError(f"categor{'y' if len(empty) == 1 else 'ies'} {', '.join(empty)} "
                        f"{'has' if len(empty) == 1 else 'have'} no documents in some split")
    if empty:
        print(f"note: skipping {len(empty)} categories without documents in every split: "
              f"{', '.join(empty)}")
        for c in empty:
            shutil.rmtree(os.path.join(out, c))
            del splits[c]
        wanted = [c for c in wanted if c not in empty]
        if not wanted:
            raise UserError("no category has documents in all of train, validation and test")
    return {"tokenizer": cfg.tokenizer, "vocab_size": enc.n_vocab, "eot": eot,
            "components": wanted, "splits": splits, "origin": origin}


# -----------------------------------------------------------------------------
# synthetic: random ergodic Markov chains, the ground truth we can compute Bayes-optimal XE for

def make_chain(rng, vocab, alpha, floor):
    rows = rng.dirichlet(np.full(vocab, alpha), size=vocab)
    transition = (1 - floor) * rows + floor / vocab          # every entry >= floor/vocab > 0
    transition /= transition.sum(1, keepdims=True)
    stationary = stationary_distribution(transition[None])[0]
    entropy_rate = float(-(stationary[:, None] * transition * np.log(transition)).sum())
    return transition, stationary, entropy_rate


def sample_docs(rng, transition, stationary, lengths):
    """Runs of the chain from its stationary distribution, all documents stepped together."""
    cdf = np.cumsum(transition, axis=1)
    cdf[:, -1] = 1.0
    n, longest = len(lengths), int(max(lengths))
    states = np.empty((n, longest), dtype=np.uint16)
    current = rng.choice(len(stationary), size=n, p=stationary)
    states[:, 0] = current
    for t in range(1, longest):
        u = rng.random(n)
        current = (cdf[current] < u[:, None]).sum(1)
        states[:, t] = current
    return [states[i, :lengths[i]] for i in range(n)]


def check_synthetic(cfg):
    """Every synthetic setting in range, before any work: one line per mistake."""
    checks = [(1 <= cfg.n_components <= 11, "n_components", "use 1 to 11 synthetic components"),
              (2 <= cfg.synth_vocab <= 4096, "synth_vocab", "use 2 to 4096 states (the chains are V x V)"),
              (cfg.concentration > 0, "concentration", "use a positive Dirichlet concentration, e.g. 0.03"),
              (0 < cfg.floor <= 1, "floor", "use a uniform floor in (0, 1], e.g. 0.02"),
              (len(cfg.doc_tokens) == 2 and 1 <= cfg.doc_tokens[0] <= cfg.doc_tokens[1], "doc_tokens",
               "give a range (min, max), e.g. --doc_tokens=1000,4000"),
              (len(cfg.split_tokens) == 3 and min(cfg.split_tokens) >= 1, "split_tokens",
               "give train, val, test token counts, each positive")]
    check_settings(cfg, checks)


def write_synthetic(cfg, out):
    rng = np.random.default_rng(cfg.seed)
    eot = cfg.synth_vocab
    names = [f"chain{i}" for i in range(cfg.n_components)]
    chains = [make_chain(rng, cfg.synth_vocab, cfg.concentration, cfg.floor) for _ in names]
    splits = {c: {} for c in names}
    lo, hi = cfg.doc_tokens
    for name, (transition, stationary, _) in zip(names, chains):
        for split, target in zip(SPLITS, cfg.split_tokens):
            lengths = []
            while sum(lengths) < target:
                lengths.append(int(rng.integers(lo, hi + 1)))
            writer = SplitWriter(os.path.join(out, name), split)
            for doc in sample_docs(rng, transition, stationary, lengths):
                writer.add(np.append(doc, eot))
            splits[name][split] = writer.close()
    np.savez(os.path.join(out, "chains.npz"), names=np.array(names),
             transition=np.stack([c[0] for c in chains]),
             stationary=np.stack([c[1] for c in chains]),
             entropy_rate=np.array([c[2] for c in chains]))
    params = {k: getattr(cfg, k) for k in ("n_components", "synth_vocab", "concentration",
                                           "floor", "doc_tokens", "split_tokens", "seed")}
    return {"tokenizer": "synthetic", "vocab_size": cfg.synth_vocab + 1, "eot": eot,
            "components": names, "splits": splits, "origin": {"synthetic": params},
            "entropy_rate": {n: c[2] for n, c in zip(names, chains)}}


# -----------------------------------------------------------------------------
# analysis: the table users read first, and the default component order

def dataset_composition(splits):
    rows = []
    for comp, per_split in splits.items():
        for split in SPLITS:
            s = per_split[split]
            rows.append({"category": comp, "split": split, "docs": s["docs"], "tokens": s["tokens"],
                         "mean_tokens_per_doc": round(s["tokens"] / max(s["docs"], 1), 1)})
    order = default_order({c: per_split["train"]["tokens"] for c, per_split in splits.items()})
    return {"rows": rows, "default_order": order, "default_budget": splits[order[0]]["train"]["tokens"]}


def print_table(stats):
    print(f"{'category':<10} {'split':<6} {'docs':>8} {'tokens':>14} {'tokens/doc':>11}")
    for r in stats["rows"]:
        print(f"{r['category']:<10} {r['split']:<6} {r['docs']:>8,} {r['tokens']:>14,} "
              f"{r['mean_tokens_per_doc']:>11,.0f}")
    order = stats["default_order"]
    print(f"top five by train tokens, smallest first (default order for K = 1..5): {', '.join(order[:5])}"
          + (f"; then, largest first, for K = 6..{len(order)}: {', '.join(order[5:])}" if order[5:] else ""))
    print(f"default token budget (train tokens of {stats['default_order'][0]}): "
          f"{stats['default_budget']:,}")


# -----------------------------------------------------------------------------

def build_dataset(final, build, source, seed):
    """
    Write a dataset folder: build(work) writes the token files into a temporary folder beside
    the final one and returns what it wrote (tokenizer, vocab_size, eot, components, splits,
    origin); then stats.json, then meta.json (last: it marks the folder complete), then the
    rename into place, so an interrupted prepare leaves nothing that looks like a dataset.
    Returns (built, stats).
    """
    parent = os.path.dirname(os.path.abspath(final))
    os.makedirs(parent, exist_ok=True)
    remove_dead_builds(parent, os.path.basename(final))
    work = tempfile.mkdtemp(dir=parent, prefix=f".tmp-{os.path.basename(final)}-")
    os.chmod(work, DIR_MODE)             # mkdtemp makes it 0700; a dataset is shared like any folder
    building = open(os.path.join(work, ".building"), "w")        # held until the rename: alive
    fcntl.flock(building, fcntl.LOCK_EX)
    try:
        built = build(work)
        stats = dataset_composition(built["splits"])
        write_json(os.path.join(work, "stats.json"), stats)
        meta = {"dataset": os.path.basename(final), "source": source,
                "tokenizer": built["tokenizer"], "vocab_size": built["vocab_size"],
                "eot": built["eot"], "dtype": "uint16", "components": built["components"],
                "default_order": stats["default_order"], "splits": built["splits"],
                "origin": built["origin"], "seed": seed,
                "created": time.strftime("%Y-%m-%d %H:%M:%S"), "provenance": provenance()}
        if "entropy_rate" in built:
            meta["entropy_rate"] = built["entropy_rate"]
        meta["fingerprint"] = content_fingerprint(work, meta)
        write_json(os.path.join(work, "meta.json"), meta)
        replace(final, work, parent)
        os.remove(os.path.join(final, ".building"))
    finally:
        building.close()
        shutil.rmtree(work, ignore_errors=True)
    return built, stats


def replace(final, work, parent):
    """Put the finished build in place. An old dataset is first renamed to a temporary name of
    our own (never a name a user could have made, like <data_dir>.old), and deleted only once the
    new one is in place; a kill between the two renames leaves the complete build under its
    temporary name, which the next prepare puts in place (remove_dead_builds)."""
    if not os.path.exists(final):
        os.rename(work, final)
        return
    old = tempfile.mkdtemp(dir=parent, prefix=f".tmp-{os.path.basename(final)}-replaced-")
    os.rmdir(old)
    os.rename(final, old)
    os.rename(work, final)
    shutil.rmtree(old, ignore_errors=True)


def recover_build(final):
    """A complete build (meta.json written) whose prepare was stopped before renaming it into place
    is put in place when the dataset is missing: a finished build is never thrown away."""
    parent, name = os.path.dirname(os.path.abspath(final)), os.path.basename(final)
    if os.path.exists(final):
        return
    done = [f for f in glob.glob(os.path.join(parent, f".tmp-{name}-*")) if "-replaced-" not in f
            and os.path.exists(os.path.join(f, "meta.json")) and not building(f)]
    for folder in sorted(done, key=os.path.getmtime, reverse=True)[:1]:
        with contextlib.suppress(FileNotFoundError):
            os.remove(os.path.join(folder, ".building"))
        os.rename(folder, final)
        print(f"note: put {final} in place: the prepare that finished it was stopped before its rename")


def remove_dead_builds(parent, name):
    """Temporary folders that prepares killed mid-build left behind (nobody holds their lock);
    never one that a live prepare is writing."""
    for folder in glob.glob(os.path.join(parent, f".tmp-{name}-*")):
        lock = os.path.join(folder, ".building")
        if not os.path.exists(lock):         # made an instant ago, or by a version without locks
            if time.time() - os.path.getmtime(folder) > 600:
                shutil.rmtree(folder, ignore_errors=True)
            continue
        if building(folder):
            continue                         # a live prepare
        shutil.rmtree(folder, ignore_errors=True)
        print(f"note: removed {folder}, left by a prepare that did not finish")


def building(folder):
    """Whether a live prepare holds this temporary folder's lock."""
    try:
        with open(os.path.join(folder, ".building"), "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return False
    except FileNotFoundError:
        return False
    except OSError:
        return True


def main(argv):
    from types import SimpleNamespace
    cfg = SimpleNamespace(**configure(config_defaults(globals()), argv))
    if cfg.source not in ("arxiv", "synthetic"):
        raise UserError(f"source='{cfg.source}': use --source=arxiv or --source=synthetic")
    check_settings(cfg, [(0 <= cfg.seed < 2 ** 63, "seed", "use a seed >= 0 (and below 2**63)")])
    if cfg.source == "synthetic":
        check_synthetic(cfg)
    cfg.data_dir = cfg.data_dir or os.path.join("data", cfg.source)
    final = cfg.data_dir.rstrip("/")
    recover_build(final)
    if os.path.exists(os.path.join(final, "meta.json")) and not cfg.force:
        rebuild = f"`python prepare.py --source={cfg.source} --data_dir={final} --force`"
        try:
            Dataset(final)
        except UserError as e:
            raise UserError(f"{final} holds a damaged dataset ({str(e).split(';')[0]}); rebuild it "
                            f"with {rebuild}")
        raise UserError(f"{final} already holds a complete dataset; use it as it is, or rebuild it "
                        f"with {rebuild}")
    if os.path.exists(final) and not os.path.exists(os.path.join(final, "meta.json")) and \
            not (os.path.isdir(final) and not os.listdir(final)):
        # replacing it would delete files that are not ours (e.g. --data_dir=data: every dataset)
        raise UserError(f"{final} exists and is not a prepared dataset (no meta.json); move it "
                        f"away or choose another --data_dir (e.g. data/{cfg.source})")
    build = write_synthetic if cfg.source == "synthetic" else tokenize_arxiv
    replacing = replacing_lock(final) if os.path.exists(os.path.join(final, "meta.json")) else None  # noqa: F841
    t0 = time.time()
    built, stats = build_dataset(final, lambda work: build(cfg, work), cfg.source, cfg.seed)
    total = sum(s["tokens"] for per in built["splits"].values() for s in per.values())
    seconds = time.time() - t0
    print_table(stats)
    print(f"wrote {final}: {total:,} tokens in {seconds:.1f}s ({total / max(seconds, 1e-9):,.0f} tokens/s)")


if __name__ == "__main__":
    run_cli(main)
