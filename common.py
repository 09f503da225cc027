"""
Pieces shared by prepare.py, train.py, evaluate.py and plot.py, kept in one flat module so no
script copies another: the nanoGPT-style configurator, one-line user errors, atomic writes,
run provenance, the dataset reader, and the window arithmetic that train and evaluate share.
"""
import ast
import hashlib
import json
import os
import platform
import subprocess
import sys
import tempfile
from contextlib import contextmanager

import numpy as np

BLOCK = 100            # targets per window: XE(t) is measured at t = 1..BLOCK
WINDOW = BLOCK + 1     # tokens per window: one token of context before the first target
SPLITS = ("train", "val", "test")
ARXIV_LABELS = ["math.AC", "cs.CV", "cs.AI", "cs.SY", "math.GR", "cs.CE", "cs.PL",
                "cs.IT", "cs.DS", "cs.NE", "math.ST"]   # ClassLabel order of ccdv/arxiv-classification


# ----------------------------------------------------------------------------------------------
# errors: a user mistake is one line that says what is wrong and how to fix it

class UserError(Exception):
    """A mistake in the input (config, data, paths). Scripts print it as one line, no traceback."""


def run_cli(main):
    """Run a script's main(); user errors become `error: ...` on stderr and exit status 2."""
    try:
        main(sys.argv[1:])
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)


# ----------------------------------------------------------------------------------------------
# configurator: module globals are the defaults; config files are plain Python; --key=value

def config_defaults(module_globals):
    """The config keys of a script: its public module globals of plain types."""
    plain = (int, float, bool, str, list, tuple, type(None))
    return {k: v for k, v in module_globals.items()
            if k.isidentifier() and k == k.lower() and not k.startswith("_")
            and isinstance(v, plain)}


def _coerce(key, value, default):
    """Check an override against the default's type; the message names the key and the type."""
    if default is None or value is None:
        return value
    if default == "auto" and isinstance(value, bool):         # --compile=True over "auto"
        return value
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
        if value in (0, 1):                                   # --compile=0
            return bool(value)
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
    elif isinstance(default, int):
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():   # 5e7 is a fine token budget
            return int(value)
    elif isinstance(default, float):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif isinstance(default, (list, tuple)):
        if isinstance(value, (list, tuple)):
            return type(default)(value)
        if isinstance(value, str):                            # --components=cs.DS,math.ST
            return type(default)(s.strip() for s in value.split(",") if s.strip())
        if isinstance(default, list) and isinstance(value, (int, float)) and not isinstance(value, bool):
            return [value]                                    # --weights=1 -> [1]
    elif isinstance(default, str):
        if isinstance(value, str):
            return value
    raise UserError(f"config key '{key}' expects {type(default).__name__} "
                    f"(default {default!r}), got {value!r}")


def configure(defaults, argv):
    """
    nanoGPT's configurator as a function: each bare argument is a Python config file executed
    over the defaults, each --key=value an override parsed as a Python literal (else a string).
    Unknown keys and wrong types are errors that name the key and list the valid ones.
    """
    config = dict(defaults)
    valid = ", ".join(sorted(defaults))
    if "--help" in argv or "-h" in argv:
        script = os.path.basename(sys.argv[0])
        print(f"usage: python {script} [config/<file>.py ...] [--key=value ...]\nkeys and defaults:\n"
              + "\n".join(f"  --{key}={value!r}" for key, value in sorted(defaults.items())))
        sys.exit(0)

    def set_key(key, value, where):
        if key not in defaults:
            raise UserError(f"unknown config key '{key}' ({where}); valid keys: {valid}")
        config[key] = _coerce(key, value, defaults[key])

    for arg in argv:
        if not arg.startswith("--"):
            if not os.path.isfile(arg):
                raise UserError(f"config file '{arg}' not found (configs live in config/, "
                                f"e.g. `python train.py config/k4.py`)")
            namespace = dict(config)
            with open(arg) as f:
                code = f.read()
            try:
                exec(compile(code, arg, "exec"), {}, namespace)
            except Exception as e:
                raise UserError(f"config file '{arg}' does not run: {type(e).__name__}: {e}")
            for key, value in namespace.items():
                if key.startswith("_") or callable(value) or type(value).__name__ == "module":
                    continue
                if key not in defaults or value is not config[key]:
                    set_key(key, value, arg)
        else:
            if "=" not in arg and isinstance(defaults.get(arg[2:]), bool):
                arg += "=True"                                # --force means --force=True
            if "=" not in arg:
                raise UserError(f"argument '{arg}' should look like --key=value; valid keys: {valid}")
            key, text = arg[2:].split("=", 1)
            try:
                value = ast.literal_eval(text)
            except (ValueError, SyntaxError):
                value = text
            set_key(key, value, arg)
    return config


# ----------------------------------------------------------------------------------------------
# files: nothing half-written ever looks complete

def atomic_write_bytes(path, data):
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-" + os.path.basename(path))
    os.chmod(tmp, 0o644)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_json(path, obj):
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode())


def read_json(path):
    with open(path) as f:
        return json.load(f)


@contextmanager
def atomic_path(path):
    """Yield a temporary path beside `path`; rename it into place only if the block succeeds."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-" + os.path.basename(path))
    os.close(fd)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def stable_hash(text):
    """A process-independent integer for a name (Python's hash() is salted per process)."""
    return int(hashlib.sha1(text.encode()).hexdigest()[:8], 16)


def read_log(path):
    """log.jsonl entries; a torn last line (a run killed mid-write) is skipped, not fatal."""
    entries = []
    if os.path.exists(path):
        with open(path) as f:
            for line in f:
                try:
                    entries.append(json.loads(line))
                except json.JSONDecodeError:
                    pass
    return entries


def file_sha(path, n=1 << 20):
    """sha1 of a file (for fingerprints: meta.json, eval sets)."""
    h = hashlib.sha1()
    with open(path, "rb") as f:
        while chunk := f.read(n):
            h.update(chunk)
    return h.hexdigest()


# ----------------------------------------------------------------------------------------------
# provenance saved with every run

def provenance():
    here = os.path.dirname(os.path.abspath(__file__))
    def git(*args):
        try:
            return subprocess.run(["git", *args], cwd=here, capture_output=True, text=True,
                                  timeout=10).stdout.strip()
        except Exception:
            return ""
    versions = {"python": platform.python_version()}
    for name in ("torch", "numpy", "tiktoken", "datasets", "scipy", "matplotlib"):
        module = sys.modules.get(name)
        if module is not None:
            versions[name] = getattr(module, "__version__", "?")
    return {"git_commit": git("rev-parse", "HEAD") or "unknown",
            "git_dirty": bool(git("status", "--porcelain", "--untracked-files=no")),
            "versions": versions, "host": platform.node(), "argv": sys.argv}


# ----------------------------------------------------------------------------------------------
# device and precision, the same for training and evaluation

def resolve_device(name):
    import torch
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"device={name} but no CUDA GPU is visible; use --device=cpu")
    try:
        return torch.device(name)
    except RuntimeError:
        raise UserError(f"device={name!r}: use auto, cpu, cuda or cuda:N")


def batched_losses(model, x, y, device, batch_size, autocast):
    """Per-token losses (float32 numpy) of windows x -> y, a batch at a time, in inference mode."""
    import torch
    out = []
    with torch.inference_mode():
        for i in range(0, len(x), batch_size):
            xb = torch.from_numpy(x[i:i + batch_size]).to(device)
            yb = torch.from_numpy(y[i:i + batch_size]).to(device)
            with autocast:
                out.append(model(xb, yb).float().cpu())
    return torch.cat(out).numpy()


def logits_batch(vocab_size):
    """Windows per forward pass that keep the float32 logits near 1 GB."""
    return max(1, (1 << 28) // (BLOCK * vocab_size))


def resolve_switch(value, device):
    """A speed switch (compile, fused AdamW): "auto" is on for CUDA and off for CPU, where these
    cost more than they save on small models; True or False is honoured on either device."""
    return device.type == "cuda" if value == "auto" else bool(value)


def resolve_dtype(dtype, device):
    """The autocast dtype: "auto" is bfloat16 on CUDA and float32 on CPU; either is honoured on
    either device (bf16 on CPU exercises the CUDA path's precision in the tests)."""
    if dtype == "auto":
        return "bfloat16" if device.type == "cuda" else "float32"
    # no float16: it needs loss scaling, which bf16 (same speed on Ampere and later) does not
    if dtype not in ("bfloat16", "float32"):
        raise UserError(f"dtype={dtype!r}: use auto, bfloat16 or float32")
    return dtype


def autocast_for(device, dtype):
    """Autocast for a resolved dtype; losses are computed in float32 regardless."""
    import torch
    if dtype == "bfloat16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return torch.autocast(device.type, enabled=False)


# ----------------------------------------------------------------------------------------------
# the dataset reader shared by train.py and evaluate.py

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
        self.meta = read_json(meta_path)
        self.meta_sha = file_sha(meta_path)
        self.name = self.meta["dataset"]
        self.source = self.meta["source"]
        self.eot = self.meta["eot"]
        self.vocab_size = self.meta["vocab_size"]
        self.components = list(self.meta["components"])
        self.default_order = list(self.meta["default_order"])
        for comp, splits in self.meta["splits"].items():
            for split, info in splits.items():
                for ext, expected in (("bin", info["bin_bytes"]), ("idx", info["idx_bytes"])):
                    path = self._path(comp, split, ext)
                    size = os.path.getsize(path) if os.path.exists(path) else None
                    if size != expected:
                        found = "missing" if size is None else f"{size} bytes"
                        raise UserError(f"{path} is {found} but meta.json says {expected} bytes: "
                                        f"the dataset is incomplete or corrupt; rebuild it with "
                                        f"`{prepare_command(data_dir)} --force`")

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
        with np.load(path) as z:
            return {k: z[k] for k in z.files}


# ----------------------------------------------------------------------------------------------
# windows: (start, n_targets) pairs into a token array; tokens[start : start + WINDOW] is the
# window, its targets are positions 1..n_targets (the rest are ignored in the loss)

def doc_windows(doc_start, doc_end, head):
    """
    Cover every token of one document (tokens[doc_start:doc_end], whose context starts at the
    separator at doc_start - 1) as a target exactly once: a head chunk of `head` targets
    (1..BLOCK), then full chunks of BLOCK, then the remainder. Returns (starts, n_targets).
    """
    length = doc_end - doc_start
    head = min(head, length)
    cuts = np.concatenate([[0], np.arange(head, length, BLOCK), [length]])
    starts = doc_start - 1 + cuts[:-1]
    return starts.astype(np.int64), np.diff(cuts).astype(np.int64)


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
