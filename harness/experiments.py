"""
The runs a report is made of: evaluated run folders read into Run records (or the reason each is
left out), grouped into experiments (runs that share every setting that changes their numbers
except seed and K, and the data and code: runs.experiment_identity), the one the report is about
chosen, how the others differ from it, the budget and arm checks, and results.csv's rows.
analysis.py computes the statistics of an experiment's runs.
"""
import os
import zipfile
from dataclasses import dataclass, field

import numpy as np

from configurator import UserError
from harness.data import POSITION_RANGES, file_sha, positions
from harness.runs import (DEFAULT_CONFIGS, TRAINING_CODE, code_fingerprint, experiment_config,
                          experiment_identity, read_json, read_log, run_arm, train_defaults, trained_on)

REFERENCES = ("bayes", "oracle", "learner", "learner1")


# -----------------------------------------------------------------------------
# runs and experiments

@dataclass
class Run:
    """An evaluated run folder: its files as read, and the facts about it that the analysis asks."""
    name: str
    dir: str
    eval: dict                      # eval.json
    arrays: dict                    # eval.npz
    config: dict                    # config.json
    done: dict
    log: list
    known_order: list = None        # the data's default order, for runs whose config.json predates it

    k = property(lambda self: int(self.eval["k"]))      # its experiment cell's K (an arm: its mixture's)
    seed = property(lambda self: self.eval["seed"])
    components = property(lambda self: list(self.eval["components"]))     # what it trained on
    arm = property(lambda self: self.eval.get("arm") or run_arm(self.settings))   # mixture.ARMS
    default_order = property(lambda self: self.config.get("dataset", {}).get("default_order")
                             or self.known_order)
    source = property(lambda self: self.eval["source"])
    settings = property(lambda self: self.config.get("config", {}))      # train.py's resolved config

    @property
    def experiment(self):
        """Its experiment's id, by runs.experiment_identity (the one definition) from config.json."""
        return experiment_identity(self.settings, self.config["dataset"]["fingerprint"], self.default_order,
                                   self.code)

    code = property(lambda self: self.config.get("code", {}).get("fingerprint"))   # None: code unknown


@dataclass
class Experiment:
    """Runs that share every setting that changes their numbers except seed and K (and the data)."""
    id: str
    runs: list = field(default_factory=list)          # the K-mixtures: the K cells
    twins: list = field(default_factory=list)         # the other arms' runs (mixture.ARMS): never in a K cell

    def arm(self, name):
        """The runs of one arm (mixture.ARMS) of this experiment."""
        return self.runs if name == "mixture" else [r for r in self.twins if r.arm == name]

    @property
    def settings(self):
        first = (self.runs or self.twins)[0]
        return experiment_config(first.settings, first.default_order)


@dataclass
class Difference:
    key: str
    main: object
    other: object


def read_run(folder):
    """A Run from an evaluated folder, or the reason it is left out."""
    for needed, what in (("eval.json", "no eval.json"), ("eval.npz", "eval.json without eval.npz")):
        if not os.path.exists(os.path.join(folder, needed)):
            return f"not evaluated ({what})"
    try:
        ev = read_json(os.path.join(folder, "eval.json"))
        with np.load(os.path.join(folder, "eval.npz")) as z:
            arrays = {key: z[key] for key in z.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:     # e.g. cut short in a copy
        return f"unreadable evaluation files ({type(e).__name__}: {e}); re-run evaluate.py"
    try:
        config = read_json(os.path.join(folder, "config.json"))
        done = read_json(os.path.join(folder, "done"))
    except (OSError, ValueError) as e:
        return f"config.json or done unreadable ({type(e).__name__}); train it again"
    needed = ("identity", "k", "seed", "components", "categories", "dataset", "source")
    if not (isinstance(ev, dict) and isinstance(config, dict) and isinstance(done, dict)) or \
            any(key not in ev for key in needed) or "dataset" not in config or "steps" not in done:
        return (f"damaged run files (eval.json, config.json or done is not what train.py and evaluate.py "
                f"write); re-run `python evaluate.py {folder} --force`, or train it again")
    torn = ev.get("npz_sha") not in (None, file_sha(os.path.join(folder, "eval.npz"))) or any(
        len(arrays.get(f"model:{c}", ())) != v.get("n_windows") for c, v in ev.get("categories", {}).items())
    if torn:
        return f"eval.json and eval.npz are not one evaluation (interrupted between them); re-run " \
               f"`python evaluate.py {folder} --force`"
    if ev["identity"] != config.get("identity"):
        return f"evaluated before this version or for another run; re-run `python evaluate.py {folder}`"
    if ev.get("checkpoint_step") != done.get("steps"):
        return (f"its checkpoint (step {ev.get('checkpoint_step')}) is not the finished run `done` "
                f"describes (step {done.get('steps')}): left out; finish it with train.py")
    log = read_log(os.path.join(folder, "log.jsonl"))
    return Run(os.path.basename(folder), folder, ev, arrays, config, done, log)


def load_runs(out_dir):
    """Evaluated runs (sorted by K, seed, name) and {name: why} for folders that are not."""
    if not os.path.isdir(out_dir):
        return [], {}
    runs, skipped, seen = [], {}, {}
    for name in sorted(os.listdir(out_dir)):
        folder = os.path.join(out_dir, name)
        if not os.path.isdir(folder) or name.startswith("."):
            continue
        run = read_run(folder)
        if isinstance(run, str):
            skipped[name] = run
        elif run.eval["identity"] in seen:   # one training run under two names (a sweep's, a hand-made one)
            skipped[name] = f"the same run (identity) as `{seen[run.eval['identity']]}`: counted once"
        else:
            seen[run.eval["identity"]] = name
            runs.append(run)
    runs.sort(key=lambda r: (r.k, str(r.seed), r.name))
    fill_default_orders(runs, out_dir)
    return runs, skipped


def fill_default_orders(runs, out_dir):
    """A run's experiment needs its data's default order, which config.json records only since
    2026-11-26: for older runs, take it from a newer run on the same data, else from the data's
    meta.json when its fingerprint is the run's."""
    known = {r.config["dataset"]["fingerprint"]: r.default_order for r in runs if r.default_order}
    for r in (r for r in runs if not r.default_order):
        fingerprint = r.config["dataset"]["fingerprint"]
        meta_path = dataset_file(r, "meta.json", out_dir)
        meta = read_json(meta_path) if meta_path else {}
        r.known_order = known.get(fingerprint) or (
            meta.get("default_order") if meta.get("fingerprint") == fingerprint else None)


def keep_most_common(runs, skipped, group, value, why):
    """Within each group of runs, those with the group's most common value are kept (a tie goes to
    the first value as text); every other run is named in `skipped`, with why(run, common)."""
    groups = {}
    for r in runs:
        groups.setdefault(group(r), []).append(r)
    left_out = set()
    for members in groups.values():
        values = [value(r) for r in members]
        common = max(sorted(set(values), key=str), key=values.count)
        for r in members:
            if value(r) != common:
                skipped[r.name] = why(r, common)
                left_out.add(id(r))
    return [r for r in runs if id(r) not in left_out]


def drop_other_evalsets(runs, skipped):
    """Every comparison pairs windows across runs: a run scored on another evaluation set is left out."""
    return keep_most_common(
        runs, skipped, lambda r: r.eval["dataset"], lambda r: r.eval.get("evalset", {}).get("sha"),
        lambda r, _: (f"evaluated on a different evaluation set than the other {r.eval['dataset']} runs; "
                      f"re-run `python evaluate.py {r.dir} --force`"))


def drop_other_evaluations(runs, skipped):
    """An experiment's runs pool only when one evaluation code and one precision scored them: the
    most common (evaluate.py's fingerprint, dtype) of each experiment is kept, the rest named."""
    def kind(r):
        return str(r.eval.get("evaluation_code", {}).get("fingerprint")), str(r.eval.get("dtype"))

    def why(r, common):
        code, dtype = kind(r)
        what = "in another precision" if code == common[0] else "by other evaluation code"
        return (f"evaluated {what} ({dtype}, evaluate code {code[:8]}) than the other runs of its experiment "
                f"({common[1]}, {common[0][:8]}); re-run `python evaluate.py {r.dir} --force --dtype={common[1]}`")
    return keep_most_common(runs, skipped, lambda r: r.experiment, kind, why)


def drop_mixed_cells(runs, skipped):
    """A K cell pools one mixture: runs of one experiment and K that extend the default order
    differently (K beyond its length) keep the mixture most of them trained on; the rest are left out."""
    def why(r, common):
        return (f"trained on {', '.join(r.components)}, while the other K={r.k}"
                f"{'' if r.arm == 'mixture' else ' ' + r.arm} runs of its experiment trained on "
                f"{', '.join(common)}: a K cell pools one mixture")
    return keep_most_common(runs, skipped, lambda r: (r.experiment, r.arm, r.k), lambda r: tuple(r.components),
                            why)


# -----------------------------------------------------------------------------
# experiments: which runs pool, and which one the report is about

def group_experiments(runs):
    """{experiment id: Experiment}; the other arms join their experiment, apart from its K cells."""
    experiments = {}
    for r in runs:
        e = experiments.setdefault(r.experiment, Experiment(r.experiment))
        (e.runs if r.arm == "mixture" else e.twins).append(r)
    return experiments


def default_experiment(run, code=None):
    """The experiment the current defaults make on this run's data: train.py's defaults with the
    source's default config files (runs.DEFAULT_CONFIGS, what `bash sweep.sh [synthetic]` runs),
    trained by the current code, or by `code` (an earlier version's fingerprint)."""
    config = train_defaults(DEFAULT_CONFIGS.get(run.source, []))
    config["token_budget"] = config["token_budget"] or run.config["dataset"]["default_budget"]
    return experiment_identity(config, run.config["dataset"]["fingerprint"], run.default_order,
                               code or code_fingerprint(TRAINING_CODE)["fingerprint"])


def choose_experiment(experiments, wanted):
    """The experiment the report is about: --group=<id prefix>, else the one the current defaults
    make, else the one they made with earlier code (after an edit, before any run of the new code),
    else the one with the most runs; and which rule chose it. Experiments of other arms alone do
    not count; ties go to the most runs."""
    groups = {e: x for e, x in experiments.items() if x.runs}
    if not groups:
        raise UserError("only control or tagged runs are evaluated; evaluate the K-mixtures they mirror too")
    if wanted:
        matches = [e for e in groups if e.startswith(wanted)]
        if len(matches) != 1:
            raise UserError(f"--group={wanted} matches {len(matches)} experiments; "
                            f"use a prefix of one of: {', '.join(e[:12] for e in groups)}")
        return groups[matches[0]], "group"
    def most_runs(ids):
        return groups[max(sorted(ids), key=lambda e: len(groups[e].runs))]
    defaults = [e for e, x in groups.items() if e == default_experiment(x.runs[0])]
    if defaults:
        return groups[defaults[0]], "defaults"
    earlier = [e for e, x in groups.items() if e == default_experiment(x.runs[0], x.runs[0].code)]
    if earlier:
        return most_runs(earlier), "defaults, earlier code"
    return most_runs(groups), "largest"


def differences(main, other):
    """How `other` differs from `main`: every experiment setting with another value, and the data."""
    a, b = main.settings, other.settings
    found = [Difference(k, a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
    codes = [(x.runs or x.twins)[0].config.get("code", {}).get("modules") for x in (main, other)]
    if codes[0] != codes[1]:
        found.append(Difference("code", *(code_summary(c, codes[1 - i]) for i, c in enumerate(codes))))
    data = [(x.runs or x.twins)[0].config["dataset"] for x in (main, other)]
    if data[0].get("fingerprint") != data[1].get("fingerprint"):
        found.append(Difference("data", f"{data[0].get('name')} ({str(data[0].get('fingerprint'))[:8]})",
                                f"{data[1].get('name')} ({str(data[1].get('fingerprint'))[:8]})"))
    return found


def code_summary(modules, other):
    """A run's code as the report names it: the modules that differ from the other's, with the
    start of their fingerprints; "unknown" for runs recorded before code entered the identity."""
    if modules is None:
        return "unknown (recorded before code entered the identity)"
    differing = sorted(m for m in modules if (other or {}).get(m) != modules[m])
    return ", ".join(f"{m} {modules[m][:8]}" for m in differing) or "the same modules"


# -----------------------------------------------------------------------------
# the dataset's files: its component order names the first component and the top five

def dataset_file(run, filename, out_dir):
    """<config.data_dir>/filename, trying the path as given and relative to out/'s parent."""
    data_dir = run.settings.get("data_dir") or run.config.get("dataset", {}).get("dir")
    if not data_dir:
        return None
    for base in ("", os.path.dirname(os.path.abspath(out_dir))):
        path = os.path.join(base, data_dir, filename)
        if os.path.exists(path):
            return path
    return None


def component_order(runs, out_dir):
    """(the dataset's stats.json or None, its default component order, whether the data gave it:
    config.json records it, older runs had it from the data's files)."""
    stats_path = next(filter(None, (dataset_file(r, "stats.json", out_dir) for r in runs)), None)
    dataset_stats = read_json(stats_path) if stats_path else None
    order = next((r.default_order for r in runs if r.default_order), None)
    if not order:
        meta_path = next(filter(None, (dataset_file(r, "meta.json", out_dir) for r in runs)), None)
        order = (dataset_stats or (read_json(meta_path) if meta_path else {})).get("default_order")
    if order:
        return dataset_stats, order, True
    return dataset_stats, list(dict.fromkeys(c for r in runs for c in r.components)), False


def first_component(runs, order):
    """The first component in the default order that every run trained on and was scored on."""
    shared = set.intersection(*({c for c in r.components if c in r.eval["categories"]} for r in runs))
    return next((c for c in order + runs[0].components if c in shared), None)


# -----------------------------------------------------------------------------
# checks: budgets, the arms against their mixtures; and the results table

@dataclass
class BudgetCheck:
    """The runs of one experiment: the tokens they planned and trained on, and their steps."""
    token_budget: int
    n_runs: int
    problems: list
    tokens: int = None

    @property
    def ok(self):
        return not self.problems


@dataclass
class ArmCheck:
    """A run of another arm against the mixture it mirrors (same K and seed): the steps it should
    take (mixture.ARMS: the mixture's, or 1/K of them, up to one per epoch of rounding; a tagged
    mixture exactly the mixture's) and the same first-component tokens (a tagged mixture: all)."""
    k: int
    seed: object
    arm: str
    run: str
    mixture: str = None
    steps: tuple = (None, None)         # (this run, the mixture)
    expected_steps: float = None
    tokens: tuple = (None, None)        # trained, (this run, the mixture)
    share: tuple = (None, None)         # the unique tokens it shares with the mixture (this run, mixture)
    tolerance: int = 0

    @property
    def ok(self):
        return (self.mixture is not None and abs(self.steps[0] - self.expected_steps) <= self.tolerance
                and self.share[0] == self.share[1])


def budget_check(runs):
    """Did every run train on the tokens it planned, the same for all, in equal steps?"""
    problems, trained, steps = [], {}, {}
    for r in runs:
        epochs = r.config.get("schedule", {}).get("epochs") or r.settings.get("epochs") or 0
        planned = sum(trained_on(r.config).get("tokens", {}).values()) * epochs or None
        trained[r.name], steps[r.name] = r.done["tokens"], r.done["steps"]
        if planned is not None and trained[r.name] != planned:
            problems.append(f"{r.name}: trained on {trained[r.name]:,} tokens but its mixture x epochs "
                            f"is {planned:,}")
    if len(set(trained.values())) > 1:
        problems.append("runs trained on different token counts: " +
                        ", ".join(f"{n}={t:,}" for n, t in trained.items()))
    if len(set(steps.values())) > 1:
        problems.append("runs took different numbers of steps: " +
                        ", ".join(f"{n}={s:,}" for n, s in steps.items()))
    return BudgetCheck(int(runs[0].eval["token_budget"]), len(runs), problems,
                       None if problems else next(iter(trained.values())))


def arm_checks(experiment):
    """Each run of another arm against the mixture it mirrors (same K and seed): steps, tokens, share."""
    mixtures = {(r.k, str(r.seed)): r for r in experiment.runs}
    checks = []
    for c in experiment.twins:
        epochs = int(c.config.get("schedule", {}).get("epochs", 0))
        check = ArmCheck(c.k, c.seed, c.arm, c.name, tolerance=0 if c.arm == "tagged" else epochs)
        m = mixtures.get((c.k, str(c.seed)))
        if m is not None:
            tokens = [trained_on(x.config).get("tokens", {}) for x in (c, m)]
            check.mixture, check.steps = m.name, (c.done["steps"], m.done["steps"])
            check.expected_steps = m.done["steps"] / (c.k if c.arm == "exposure" else 1)
            check.tokens = (c.done["tokens"], m.done["tokens"])
            check.share = ((tokens[0], tokens[1]) if c.arm == "tagged" else
                           tuple(t.get(c.components[0]) for t in tokens))
        checks.append(check)
    return checks


def results_rows(runs):
    """results.csv: one row per run and evaluation category, every experiment."""
    rows = []
    for r in runs:
        ev = r.eval
        for cat, c in ev["categories"].items():
            row = {"run": r.name, "experiment": r.experiment, "dataset": ev["dataset"],
                   "source": ev["source"], "K": r.k, "arm": r.arm,
                   "components": "+".join(r.components), "seed": r.seed, "model_size": ev["model_size"],
                   "n_params": ev["n_params"], "token_budget": ev["token_budget"], "category": cat,
                   "in_mixture": c["in_mixture"], "n_windows": c["n_windows"]}
            for kind in ("",) + REFERENCES:
                block = c.get(kind) if kind else c
                if block:
                    prefix = f"{kind}_" if kind else ""
                    xe_t = np.asarray(block["xe_t"], dtype=float)
                    row.update({f"{prefix}xe_mean": block["xe_mean"],
                                f"{prefix}xe_mean_bits": block["xe_mean_bits"]})
                    row.update({f"{prefix}{m}": xe_t[positions(m)].mean()
                                for m in POSITION_RANGES if m != "xe_mean"})
            rows.append(row)
    return rows

