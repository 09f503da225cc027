"""
The dataset reader and the window arithmetic that prepare, train, evaluate and plot share.

A prepared dataset is a folder: meta.json (written last) plus <component>/<split>.bin (uint16
tokens, every document followed by EOT) and .idx (int64 document start offsets, n_docs + 1).
A window is WINDOW = BLOCK + 1 tokens: one token of context, then BLOCK targets; XE(t) is
measured at t = 1..BLOCK.
"""
import hashlib
import json
import os

import numpy as np

from configurator import UserError

BLOCK = 100            # targets per window: XE(t) is measured at t = 1..BLOCK
WINDOW = BLOCK + 1     # tokens per window: one token of context before the first target
SPLITS = ("train", "val", "test")
# The position ranges every table, figure and sentence reports, in one place: name -> (first t,
# last t). Add one (say "xe_mid": (11, 50)) and results.csv, REPORT.md, fits.json and the
# figures follow. "xe_mean" is the whole window; early is where identification happens, late
# where K should not matter.
POSITION_RANGES = {"xe_mean": (1, BLOCK), "xe_early": (1, 10), "xe_late": (51, BLOCK)}


def positions(name):
    """The slice of positions t (0-based) of a range of POSITION_RANGES."""
    first, last = POSITION_RANGES[name]
    return slice(first - 1, last)


def range_label(name):
    """How tables and captions name a range: "mean over t = 1..100", "early, t = 1..10"."""
    first, last = POSITION_RANGES[name]
    return (f"mean over t = {first}..{last}" if name == "xe_mean" else
            f"{name.removeprefix('xe_').replace('_', ' ')}, t = {first}..{last}")


def stable_hash(text):
    """A process-independent integer for a name (Python's hash() is salted per process)."""
    return int(hashlib.sha1(text.encode()).hexdigest()[:8], 16)


def file_sha(path, n=1 << 20):
    """sha1 of a file's bytes."""
    h = hashlib.sha1()
    with open(path, "rb") as f:
        while chunk := f.read(n):
            h.update(chunk)
    return h.hexdigest()


def content_fingerprint(data_dir, meta):
    """
    What a dataset is, from its content: the bytes of every token and offset file, the chains
    of a synthetic dataset, and the facts meta.json states about them. Not meta.json's text (its
    timestamp and command line), so an identical rebuild keeps every run made on it valid.
    """
    h = hashlib.sha256(json.dumps({k: meta[k] for k in ("vocab_size", "eot", "components",
                                                         "default_order")}, sort_keys=True).encode())
    for comp in sorted(meta["splits"]):
        for split in sorted(meta["splits"][comp]):
            for ext in ("bin", "idx"):
                name = f"{comp}/{split}.{ext}"
                h.update(f"{name}:{file_sha(os.path.join(data_dir, name))}".encode())
    chains = os.path.join(data_dir, "chains.npz")
    if os.path.exists(chains):                  # its zip header carries a time: hash the arrays
        with np.load(chains) as z:
            for key in sorted(z.files):
                h.update(key.encode() + np.ascontiguousarray(z[key]).tobytes())
    return h.hexdigest()


def hold_for_reading(data_dir):
    """A shared lock on the dataset for this process's life: `prepare.py --force` refuses to
    replace a dataset that a train.py or evaluate.py is reading (replacing_lock). None where the
    folder is not ours to write (read-only data cannot be rebuilt under a reader either)."""
    import fcntl
    try:
        handle = open(os.path.join(data_dir, ".readers"), "a+")
    except OSError:
        return None
    fcntl.lockf(handle, fcntl.LOCK_SH)      # a process's own locks never conflict with each other
    return handle


def replacing_lock(data_dir):
    """The exclusive lock prepare.py --force takes before replacing a dataset; a UserError naming
    the readers' cause when some process reads it."""
    import fcntl
    handle = open(os.path.join(data_dir, ".readers"), "a+")
    try:
        fcntl.lockf(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.close()
        raise UserError(f"{data_dir} is being read by a running train.py or evaluate.py (a sweep?); "
                        f"stop it, or build the new data elsewhere with --data_dir=<other folder>")
    return handle


def default_order(train_tokens):
    """
    The default component order, from each component's train tokens: the top five, smallest
    first (K = 1 is the smallest of them, so its budget is every token it has), then the rest,
    largest first, so that K runs up to the number of components (a peer study ran K = 1, 3, 5,
    8, 11 on arXiv's 11). The first five are the "top five" view.
    """
    by_tokens = sorted(train_tokens, key=lambda c: (-train_tokens[c], c))
    return sorted(by_tokens[:5], key=lambda c: (train_tokens[c], c)) + by_tokens[5:]


def prepare_command(data_dir):
    if "synthetic" in os.path.basename(os.path.normpath(data_dir)):
        return f"python prepare.py --source=synthetic --data_dir={data_dir}"
    return f"python prepare.py --data_dir={data_dir}"


class Dataset:
    """
    A prepared dataset folder: meta.json plus <component>/<split>.bin (uint16 tokens, documents
    separated by EOT) and .idx (int64 document start offsets, n_docs + 1). Opening checks every
    file against meta.json, so a truncated or half-copied dataset is caught before training.
    """

    def __init__(self, data_dir):
        self.dir = data_dir
        meta_path = os.path.join(data_dir, "meta.json")
        if not os.path.isfile(meta_path):
            raise UserError(f"no prepared dataset in {data_dir} (meta.json missing); "
                            f"run `{prepare_command(data_dir)}`")
        self.reading = hold_for_reading(data_dir)
        try:
            with open(meta_path) as f:
                self.meta = json.load(f)
        except (OSError, ValueError) as e:
            raise UserError(f"{meta_path} is unreadable ({type(e).__name__}); rebuild the dataset "
                            f"with `{prepare_command(data_dir)} --force`")
        try:
            self.name = self.meta["dataset"]
            self.source = self.meta["source"]
            self.eot = self.meta["eot"]
            self.vocab_size = self.meta["vocab_size"]
            self.components = list(self.meta["components"])
            self.default_order = default_order({c: per_split["train"]["tokens"]
                                                for c, per_split in self.meta["splits"].items()})
            if self.meta.get("dtype", "uint16") != "uint16":        # the token files' one format
                raise UserError(f"{meta_path} says its tokens are {self.meta['dtype']}; this harness "
                                f"reads uint16 (vocabularies up to 65,536): rebuild it with "
                                f"`{prepare_command(data_dir)} --force`")
            self.check_files()
        except (KeyError, TypeError, AttributeError) as e:
            raise UserError(f"{meta_path} is not a dataset's meta.json ({type(e).__name__}: {e}); rebuild the "
                            f"dataset with `{prepare_command(data_dir)} --force`")
        # datasets prepared before fingerprints were recorded, or before the default order went on
        # past the top five (2026-11-28), get theirs from the files: their runs are trained again
        same_order = self.meta["default_order"] == self.default_order
        recorded = self.meta.get("fingerprint") if same_order else None
        self.fingerprint = recorded or content_fingerprint(data_dir,
                                                           dict(self.meta, default_order=self.default_order))

    def check_files(self):
        for comp, splits in self.meta["splits"].items():
            for split, info in splits.items():
                for ext, expected in (("bin", info["bin_bytes"]), ("idx", info["idx_bytes"])):
                    path = self._path(comp, split, ext)
                    size = os.path.getsize(path) if os.path.exists(path) else None
                    if size != expected:
                        found = "missing" if size is None else f"{size} bytes"
                        raise UserError(f"{path} is {found} but meta.json says {expected} bytes: "
                                        f"the dataset is incomplete or corrupt; rebuild it with "
                                        f"`{prepare_command(self.dir)} --force`")

    def _path(self, comp, split, ext):
        return os.path.join(self.dir, comp, f"{split}.{ext}")

    def check_component(self, comp):
        if comp not in self.components:
            raise UserError(f"unknown component '{comp}' in {self.dir}; available: "
                            f"{', '.join(self.components)}")

    def tokens(self, comp, split):
        self.check_component(comp)
        return np.memmap(self._path(comp, split, "bin"), dtype=np.uint16, mode="r")

    def offsets(self, comp, split):
        self.check_component(comp)
        return np.fromfile(self._path(comp, split, "idx"), dtype=np.int64)

    def n_tokens(self, comp, split):
        return self.meta["splits"][comp][split]["tokens"]

    def chains(self):
        """Synthetic data only: transition matrices, stationary distributions, entropy rates."""
        path = os.path.join(self.dir, "chains.npz")
        if self.source != "synthetic" or not os.path.exists(path):
            return None
        try:
            with np.load(path) as z:                      # no pickles: arrays only
                return {k: z[k] for k in z.files}
        except (OSError, ValueError, EOFError) as e:
            raise UserError(f"{path} is unreadable ({type(e).__name__}); rebuild the dataset with "
                            f"`{prepare_command(self.dir)} --force`")


# -----------------------------------------------------------------------------
# windows: (start, n_targets) pairs into a token array; tokens[start : start + WINDOW] is the
# window, its targets are positions 1..n_targets (the rest are ignored in the loss)

def gather_windows(tokens, starts, n_targets=None, ignore_index=-1):
    """
    Vectorised window gather: (x, y) int64 arrays of shape (len(starts), BLOCK). Works on numpy
    arrays and memmaps (CPU) and the same arithmetic is used on torch tensors on CUDA (train.py).
    Targets beyond a window's n_targets are set to ignore_index; n_targets=None means full windows.
    """
    # every window is a row of one strided view of the tokens: a single row gather, no index grid
    flat = np.asarray(tokens)
    step = flat.strides[0]
    rows = np.lib.stride_tricks.as_strided(flat, (len(flat) - WINDOW + 1, WINDOW), (step, step),
                                           writeable=False)
    batch = rows[np.asarray(starts)].astype(np.int64)
    x, y = np.ascontiguousarray(batch[:, :-1]), batch[:, 1:].copy()   # contiguous, as models expect
    n_targets = np.full(len(batch), BLOCK) if n_targets is None else np.asarray(n_targets)
    if (n_targets < BLOCK).any():
        y[np.arange(BLOCK)[None, :] >= n_targets[:, None]] = ignore_index
    return x, y


def fixed_windows(dataset, comp, split, n, seed):
    """
    n full windows (WINDOW tokens inside one document, no separator) from one component's
    split, spread over as many documents as possible: documents are visited round-robin in a
    seeded order and each contributes windows at random non-overlapping positions. Returns
    (starts into the split's .bin, doc ids), sorted by (doc, start). Deterministic in seed.
    """
    offsets = dataset.offsets(comp, split)
    rng = np.random.default_rng([seed, stable_hash(comp)])
    # a document's windows must end before its EOT; slots are the non-overlapping positions
    lengths = np.diff(offsets) - 1
    slots = np.maximum(lengths // WINDOW, 0)
    total = int(slots.sum())
    if total == 0:
        raise UserError(f"{comp}/{split} has no document of {WINDOW}+ tokens to evaluate on")
    n = min(n, total)
    # round-robin over documents: take one slot from each document, then a second, ...
    order = rng.permutation(len(slots))
    taken = np.zeros(len(slots), dtype=np.int64)
    picks = []
    while len(picks) < n:
        for d in order:
            if taken[d] < slots[d]:
                taken[d] += 1
                picks.append(d)
                if len(picks) == n:
                    break
    starts, docs = [], []
    for d in np.unique(picks):
        k = int(taken[d])
        slack = int(lengths[d] - k * WINDOW)          # spare tokens to spread between windows
        gaps = np.sort(rng.integers(0, slack + 1, size=k))
        starts.extend(offsets[d] + np.arange(k) * WINDOW + gaps)
        docs.extend([d] * k)
    return np.asarray(starts, dtype=np.int64), np.asarray(docs, dtype=np.int64)
