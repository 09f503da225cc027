"""
The run folder: how its files are written (atomically, never half-written), what a run records
about where it came from, and (below) the run's identity, name and lock.
"""
import ast
import contextlib
import errno
import hashlib
import io
import json
import os
import platform
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import tokenize
from contextlib import contextmanager

from configurator import UserError, configure, script_defaults

# files are made with the permissions the user's umask gives (tempfile would make them 0600)
_UMASK = os.umask(0)
os.umask(_UMASK)
FILE_MODE = 0o666 & ~_UMASK
DIR_MODE = 0o777 & ~_UMASK


def atomic_write_bytes(path, data):
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-" + os.path.basename(path))
    os.chmod(tmp, FILE_MODE)
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
    os.chmod(tmp, FILE_MODE)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


@contextmanager
def full_disk_is_one_line(message):
    """A full disk inside the block (ENOSPC or EDQUOT; torch.save reports it as a RuntimeError of
    its write) becomes UserError(message): one line that says what was kept and what to run."""
    try:
        yield
    except OSError as e:
        if e.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        raise UserError(message) from e
    except RuntimeError as e:
        if "write" not in str(e):
            raise
        raise UserError(message) from e


def read_run_file(path, folder, required=True):
    """A JSON file of a run folder; a damaged one is one line naming it (or None if not required)."""
    try:
        return read_json(path)
    except (OSError, ValueError) as e:
        if not required:
            return None
        raise UserError(f"{path} is damaged ({type(e).__name__}); delete {folder} and run the same "
                        f"command to train the run again")


def read_log(path):
    """log.jsonl's records: a torn last line (a run killed mid-write), bytes that are not UTF-8 or
    lines that are not a record of train.py's (an object with a kind and a step) are skipped."""
    entries = []
    if os.path.exists(path):
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    continue
                number = isinstance(record, dict) and {"train": "loss", "val": "val_loss"}.get(record.get("kind"))
                if number and isinstance(record.get("step"), int) and all(
                        isinstance(record.get(key), (int, float)) for key in (number, "tokens")):
                    entries.append(record)
    return entries


def trained_on(saved):
    """What a run trained on, from its config.json: {"components", "weights", "tokens", "docs"}
    (a control: its one component). Runs before 2026-11-28 recorded it as "mixture"."""
    return saved.get("trained_on") or saved.get("mixture") or {}


def run_arm(config):
    """A run's arm (harness/mixture.py ARMS) from its resolved config; runs before 2026-11-28 had
    only the steps-matched control, as control=True."""
    return config.get("arm") or ("control" if config.get("control") else "mixture")


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


# -----------------------------------------------------------------------------
# identity: which runs are the same run. One definition, used by train, sweep, evaluate and plot.

# Keys that never change a run's numbers, so they are not part of its identity: names and paths,
# switches that change only speed or floating-point rounding (compile, bf16 autocast, the fused
# optimizer kernel, thread counts, where the data lives), and what is logged or checked along the
# way (validation runs in inference mode and draws no random numbers). Every other key of
# train.py's config is, with the data's content fingerprint. A key added to train.py later joins
# the identity, so runs made before it get new names and are trained again, never mixed in.
NOT_IDENTITY = ("run_name", "out_root", "out_dir", "data_dir", "size", "identity", "print_run_dir",
                "device", "compile", "dtype", "fused_adamw", "gpu_resident", "loss_impl", "cpu_threads",
                "log_interval", "eval_interval", "val_windows", "ckpt_interval", "keep_optimizer", "peak_flops",
                "wandb_log", "wandb_project", "wandb_run_name")
# What may differ between the runs of one experiment: its seeds, and K with the mixture K implies
# (every arm mirrors the K-mixture of its experiment). Components and weights count only
# through mixture_rule: the first K of the default order with equal weights, or an explicit mixture.
WITHIN_EXPERIMENT = ("seed", "k", "components", "weights", "arm",
                     "control")       # before 2026-11-28 the steps-matched control was control=True


ARM_NAMES = {"mixture": "", "control": "ctrl", "exposure": "expo", "tagged": "tag"}   # arms in run names


def _digest(obj):
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()


def identity_config(config):
    """The settings that make a run's numbers, from its resolved config (a dict)."""
    return {k: v for k, v in sorted(config.items()) if k not in NOT_IDENTITY}


def run_identity(config, data_fingerprint, code=None):
    """A run's identity: a hash of every setting that changes its numbers, of its data, and of the
    code that turns them into numbers (code_fingerprint(TRAINING_CODE)). code=None is a run
    recorded before code entered the identity: its identity is what it was then."""
    parts = {"config": identity_config(config), "data": data_fingerprint}
    return _digest(parts if code is None else dict(parts, code=code))


def mixture_rule(config, default_order):
    """
    How a run's mixture follows from its K: "default order" (the first K components of the
    dataset's default order, equal weights: what a K sweep varies; beyond the default order's
    length, components that extend it), else the explicit components and weights, an experiment
    of their own, so that a --weights=3,1 or --components=a,c run is never pooled as another seed
    of K = 2. default_order None (a run from before it was recorded): components not checked.
    Runs of one K that extend the order differently are told apart by experiments.drop_mixed_cells.
    """
    names, weights = list(config.get("components") or []), list(config.get("weights") or [])
    equal = all(abs(w - weights[0]) < 1e-9 for w in weights)
    shared = min(len(names), len(default_order or []))
    in_order = not names or default_order is None or names[:shared] == list(default_order[:shared])
    return "default order" if equal and in_order else {"components": names, "weights": weights}


def experiment_config(config, default_order=None):
    """The settings an experiment's runs share: all of a run's identity but seed and K, and how
    K makes the mixture."""
    shared = {k: v for k, v in identity_config(config).items() if k not in WITHIN_EXPERIMENT}
    return dict(shared, mixture=mixture_rule(config, default_order))


def experiment_identity(config, data_fingerprint, default_order=None, code=None):
    """An experiment's id: its runs' shared settings, data and code (None: "code unknown")."""
    parts = {"config": experiment_config(config, default_order), "data": data_fingerprint}
    return _digest(parts if code is None else dict(parts, code=code))


# -----------------------------------------------------------------------------
# the code that makes the numbers: edits train new runs; comments and docstrings do not

# by module name, never by path (a moved file keeps its fingerprint)
TRAINING_CODE = ("train", "model", "harness.data", "harness.mixture")
EVALUATION_CODE = ("evaluate", "model", "harness.data", "harness.mixture", "harness.references")


def source_fingerprint(source):
    """
    sha256 of a module's tokens without comments, docstrings or layout: the same for a reformatted
    file and on Python 3.10-3.13 (ast.dump is not: 3.12 prints fields 3.11 does not). Logical
    lines and indentation count; how a line is broken or indented, and what comments say, do not.
    Python 3.12 splits f-strings into tokens: each is joined back into one string, as before 3.12.
    """
    tree = ast.parse(source)
    docstrings = {(body[0].lineno, body[0].col_offset) for node in ast.walk(tree)
                  if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
                  for body in [node.body]
                  if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant)
                  and isinstance(body[0].value.value, str)}
    lines = source.splitlines(keepends=True)
    offsets = [0]
    for line in lines:
        offsets.append(offsets[-1] + len(line))
    h, fstring, skipping = hashlib.sha256(), [], False
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        kind = tokenize.tok_name[tok.type]
        if kind in ("COMMENT", "NL", "ENCODING", "ENDMARKER"):
            continue
        if kind == "FSTRING_START":
            fstring.append(tok.start)
            continue
        if fstring:                                  # inside an f-string (3.12+): joined at its end
            if kind == "FSTRING_END":
                start = fstring.pop()
                if not fstring:
                    text = source[offsets[start[0] - 1] + start[1]:offsets[tok.end[0] - 1] + tok.end[1]]
                    h.update(b"STRING " + text.encode() + b"\n")
            continue
        if kind == "STRING" and tok.start in docstrings:
            skipping = True                          # the docstring and the end of its line
        if skipping:
            skipping = kind != "NEWLINE"
            continue
        h.update((kind if kind in ("NEWLINE", "INDENT", "DEDENT") else f"{kind} {tok.string}").encode() + b"\n")
    return h.hexdigest()


def code_fingerprint(modules):
    """{"fingerprint", "modules": {name: fingerprint}} of the modules' source, read from ROOT."""
    found = {}
    for name in sorted(set(modules)):
        path = os.path.join(ROOT, *name.split(".")) + ".py"
        with open(path, encoding="utf-8") as f:
            found[name] = source_fingerprint(f.read())
    return {"fingerprint": _digest(found), "modules": found}


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))     # where the scripts are
CONFIG_DIR = os.path.join(ROOT, "config")


# the config files a sweep of each source runs with by default (sweep.sh's BASE_CONFIG): plot.py
# calls the experiment they give "the default one"
DEFAULT_CONFIGS = {"synthetic": [os.path.join(CONFIG_DIR, "synthetic.py")], "arxiv": []}


def train_defaults(config_files=()):
    """train.py's config (its module defaults, then config files), read without importing train."""
    script = os.path.join(os.path.dirname(CONFIG_DIR), "train.py")
    return configure(script_defaults(script), list(config_files))


def size_config(name):
    """A size as a run config: a config file's name (tiny, small, medium: config/<name>.py, read
    by train.py's own configurator) or '<L>L-<d>d-<h>h[-v<vocab>]'. Returns (config, vocab)."""
    gpt2_vocab = 50257                 # model.GPTConfig's default: GPT-2's vocabulary
    path = os.path.join(CONFIG_DIR, f"{name}.py")
    if os.path.isfile(path):
        return train_defaults([path]), gpt2_vocab
    m = re.fullmatch(r"(\d+)L-(\d+)d-(\d+)h(?:-v(\d+))?", name)
    if not m:
        raise UserError(f"size '{name}': use a config name (tiny, small, medium) or "
                        f"'<L>L-<d>d-<h>h[-v<vocab>]' (e.g. 2L-64d-4h-v65)")
    return (dict(train_defaults(), n_layer=int(m[1]), n_embd=int(m[2]), n_head=int(m[3])),
            int(m[4] or gpt2_vocab))


def size_dims(name):
    """(n_layer, n_head, n_embd) of a named size: config/<name>.py over train.py's defaults (which
    are size "small"), both read as literals, without running either."""
    values = {**script_defaults(os.path.join(ROOT, "train.py")),
              **script_defaults(os.path.join(CONFIG_DIR, f"{name}.py"))}
    return tuple(values.get(k) for k in ("n_layer", "n_head", "n_embd"))


def size_label(config):
    """
    A run's size in names and tables: the size config's name (config/<size>.py names itself)
    when the run has that config's dimensions, else the dimensions, so a name never claims a
    size the run does not have (config/tiny.py --n_embd=512 is "4L-512d-4h", not "tiny").
    """
    dims = (config["n_layer"], config["n_head"], config["n_embd"])
    name = config.get("size") or ""
    if name and os.path.isfile(os.path.join(CONFIG_DIR, f"{name}.py")) and size_dims(name) == dims:
        return name
    return f"{dims[0]}L-{dims[2]}d-{dims[1]}h"


def default_run_name(config, dataset_name, identity, size_label):
    """Readable (dataset, K, arm, size, seed) plus the identity's start, so that two runs
    differing in anything else (an ablation, a changed default) never share a folder."""
    kind = ARM_NAMES.get(run_arm(config), "")          # an unknown arm is refused later, in one line
    return f"{dataset_name}_k{config['k']}{kind}_{size_label}_s{config['seed']}_{identity[:8]}"


# -----------------------------------------------------------------------------
# one process per run folder, and nothing left running when a sweep dies

def open_no_follow(path, writable=True):
    """A file of ours opened without following a symbolic link (a link planted in a copied run
    folder must never redirect a write elsewhere): created with the umask's mode if missing.
    Read-only when this user may not write it (another user's run folder)."""
    flags = (os.O_RDWR | os.O_CREAT if writable else os.O_RDONLY) | getattr(os, "O_NOFOLLOW", 0)
    try:
        return os.open(path, flags, FILE_MODE)
    except OSError as e:
        if e.errno == errno.ELOOP or os.path.islink(path):
            raise UserError(f"{path} is a symbolic link; this harness never follows one for its own files: "
                            f"remove it (`rm {path}`) and run this again")
        if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS) and writable and os.path.exists(path):
            return open_no_follow(path, writable=False)
        if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            raise UserError(f"no permission to write {path} ({os.strerror(e.errno)}); run this as the folder's "
                            f"owner, or copy the run folder to a place of your own")
        raise


def lock_folder(folder, what):
    """
    Hold an exclusive lock on a run folder for this process's life (the OS releases it when the
    process dies, however it dies). A second holder gets one line naming the PID that holds it.
    The lock file is never followed if it is a link, and another user's read-only folder is
    locked read-only (flock needs no write access). Returns the open lock file; keep it.
    """
    import fcntl
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create {folder} ({os.strerror(e.errno)}); choose another folder")
    handle = os.fdopen(open_no_follow(os.path.join(folder, ".lock")), "r+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.seek(0)
        holder = handle.read().strip() or "unknown"
        handle.close()
        raise UserError(f"{folder} is in use by another process ({holder}); wait for it to finish "
                        f"or stop it, then run this again")
    with contextlib.suppress(OSError):               # read-only for another user: the lock still holds
        handle.seek(0)
        handle.truncate()
        handle.write(f"PID {os.getpid()}, {what}")
        handle.flush()
    return handle


def stop_with_sweep():
    """
    Under sweep.sh (which exports SWEEP_PID), end this process when the sweep is gone, however
    it died (kill -9 included), as SIGTERM: train.py then saves a checkpoint and exits, and a
    restarted sweep never races a trainer the old one left behind.
    """
    pid = int(os.environ.get("SWEEP_PID", "0") or 0)
    if not pid:
        return

    def watch():
        while process_alive(pid):
            time.sleep(0.5)
        os.kill(os.getpid(), signal.SIGTERM)
    threading.Thread(target=watch, daemon=True, name="stop-with-sweep").start()


def process_alive(pid):
    """Whether a process runs. A killed process whose parent has not reaped it yet (a zombie,
    which a container's PID 1 may never reap) has stopped running: it counts as gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False
    except OSError:                          # no /proc (macOS): ask the kernel
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            pass
        return True


# -----------------------------------------------------------------------------
# checkpoints: loaded as tensors and numbers only, never as code

def load_checkpoint(path, mmap=False):
    """
    torch.load with weights_only=True: a checkpoint copied from someone else cannot run code
    here. A file that is not a checkpoint, or is cut short, is one line that says what to do.
    mmap=True reads only what is used (the step, say) of a large file.
    """
    import pickle
    import torch
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0][:160] if str(e).strip() else ""
        raise UserError(f"refusing to load {path}: it holds objects other than tensors and numbers "
                        f"(a checkpoint made by train.py never does; {first}); delete it if you "
                        f"do not trust where it came from")
    except Exception as e:
        raise UserError(f"{path} is damaged or not a checkpoint ({type(e).__name__}); delete it "
                        f"(`rm {path}`) and run the same command to restart this run from step 0")


def duration(seconds):
    """'1h05m' or '4m09s': an ETA as a person reads it."""
    seconds = int(seconds)
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else \
        f"{seconds // 60}m{seconds % 60:02d}s"
