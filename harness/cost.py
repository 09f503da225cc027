"""
What a sweep costs, in one place: the runs of every arm and their steps as a share of a
mixture's (the GPU estimate bench.py --what=gpu computes from measured rates), and the CPU
estimate that sweep.sh prints instead of starting an arXiv sweep on a machine without a GPU:

    python -m harness.cost --data_dir=data/arxiv --sizes=small --ks=1,2,3,4,5 --seeds=1,2,3
"""
import os
from types import SimpleNamespace

from configurator import UserError, config_defaults, configure, run_cli
from harness.runs import read_json, size_config

# -----------------------------------------------------------------------------
data_dir = "data/arxiv"     # its stats.json gives the budget (else ~50M tokens, the dataset card's)
sizes = ["small"]
ks = [1, 2, 3, 4, 5]
seeds = [1, 2, 3]
arms = ["mixture", "control", "exposure", "tagged"]     # mixture.ARMS (sweep.sh: the mixture + ARMS)
cpu_flops = 5e10            # what 2-4 cores sustain on these models in float32, roughly
# -----------------------------------------------------------------------------

# each arm (mixture.ARMS): its steps as a share of its K-mixture's; arms beside the mixture run at K >= 2
ARM_SHARES = {
    "mixture": lambda k: 1.0,
    "control": lambda k: 1.0,           # steps-matched: epochs x K passes over a 1/K share
    "exposure": lambda k: 1.0 / k,      # exposure-matched: that share for `epochs` passes
    "tagged": lambda k: 1.0,
}


def run_shares(ks, seeds, arms=tuple(ARM_SHARES)):
    """Each run's steps as a share of a mixture run's, over the arms, K values and seeds."""
    unknown = [arm for arm in arms if arm not in ARM_SHARES]
    if unknown:
        raise UserError(f"arms: {', '.join(unknown)} is not an arm; use some of {', '.join(ARM_SHARES)}")
    return [ARM_SHARES[arm](k) for arm in arms for k in ks if arm == "mixture" or k >= 2] * seeds


def sweep_cost(tokens_per_run, tok_per_s_per_slot, slots, fixed_s, eval_s, ks=(1, 2, 3, 4, 5), seeds=3):
    """Wall hours of a sweep with every arm: runs spread over `slots` runs at once, each slot at
    tok_per_s_per_slot, plus every run's fixed start/compile time and evaluation.
    Returns (runs, mixture-run equivalents, hours)."""
    shares = run_shares(ks, seeds)
    train_s = sum(shares) * tokens_per_run / tok_per_s_per_slot
    return len(shares), sum(shares), (train_s + len(shares) * (fixed_s + eval_s)) / slots / 3600


def cpu_estimate(cfg):
    """Days the arXiv sweep (sweep.sh's grid) would take on this CPU, from its runs' FLOPs."""
    from model import GPT, GPTConfig
    stats = os.path.join(cfg.data_dir, "stats.json")
    budget = read_json(stats)["default_budget"] if os.path.exists(stats) else 50_000_000
    shares = run_shares(cfg.ks, len(cfg.seeds), cfg.arms)
    flops, epochs = 0.0, 4
    for size in cfg.sizes:
        run_config, vocab = size_config(size)
        epochs = run_config["epochs"]
        flops += GPT(GPTConfig.from_run(run_config, vocab)).flops_per_token() * budget * epochs * sum(shares)
    return len(shares) * len(cfg.sizes), budget, epochs, flops / cfg.cpu_flops / 86400


def main(argv):
    cfg = SimpleNamespace(**configure(config_defaults(globals()), argv))
    runs, budget, epochs, days = cpu_estimate(cfg)
    print(f"no GPU visible: the arXiv sweep ({runs} runs, {budget:,} tokens x {epochs} epochs each) would "
          f"take about {days:.0f} days on this CPU.\nRun `bash sweep.sh synthetic` for the CPU-sized "
          f"experiment, or FORCE_CPU=1 bash sweep.sh to insist.")


if __name__ == "__main__":
    run_cli(main)
