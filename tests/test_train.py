"""train.py: exact epochs, equal budgets across K, resume equivalence, DDP coverage, errors, learning."""
import json
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

import evaluate
import train
from configurator import UserError
from harness.mixture import WindowSource
from harness.data import BLOCK, Dataset, gather_windows
from model import GPT, GPTConfig, resolve_device
from conftest import ROOT, make_synthetic

TINY_MODEL = ["--n_layer=1", "--n_head=2", "--n_embd=16", "--batch_size=4", "--device=cpu",
              "--cpu_threads=1", "--warmup_iters=2", "--log_interval=1", "--eval_interval=5", "--val_windows=8"]


def run_train(data_dir, out_dir, *extra):
    train.main([f"--data_dir={data_dir}", f"--out_dir={out_dir}", *TINY_MODEL, *extra])
    return str(out_dir)


def read(path):
    with open(path) as f:
        return json.load(f)


def read_log(out_dir):
    with open(os.path.join(out_dir, "log.jsonl")) as f:
        return [json.loads(line) for line in f]


def deterministic_fields(log):
    drop = {"tok_per_s", "mfu", "elapsed", "step_ms", "data_ms"}
    return [{k: v for k, v in r.items() if k not in drop} for r in log]


# ----------------------------------------------------------------------------- mixture and epochs

@pytest.mark.parametrize("weights", [[], [0.5, 0.3, 0.2]])
def test_every_token_is_a_target_exactly_once_per_epoch(tiny_synthetic, weights):
    ds = Dataset(tiny_synthetic)
    cfg = train.SimpleNamespace(components=[], k=3, weights=weights, token_budget=4000)
    names, quotas, _ = train.resolve_mixture(ds, cfg)
    assert sum(quotas) == 4000
    mix = train.Mixture(ds, names, quotas, seed=3)
    # the buffer holds each component's quota exactly, as whole documents (the last one cut)
    lengths = mix.doc_end - mix.doc_start
    for c, quota in enumerate(quotas):
        assert lengths[mix.doc_comp == c].sum() == quota
    owner = np.full(len(mix.tokens), -1)
    for d, (s, e) in enumerate(zip(mix.doc_start, mix.doc_end)):
        owner[s:e] = d
        assert mix.tokens[s - 1] == ds.eot                     # context starts at a separator
    phases_seen = []
    for epoch in range(3):
        starts, n_targets, comp = mix.epoch_windows(seed=3, epoch=epoch)
        hits = np.zeros(len(mix.tokens), dtype=np.int64)
        for s, n, c in zip(starts, n_targets, comp):
            assert 1 <= n <= BLOCK
            targets = np.arange(s + 1, s + 1 + n)
            hits[targets] += 1
            docs = set(owner[targets])
            assert len(docs) == 1, "a window's targets span two documents"
            d = docs.pop()
            assert s >= mix.doc_start[d] - 1                     # context stays in the document
            assert mix.doc_comp[d] == c
        inside = owner >= 0
        assert np.all(hits[inside] == 1) and np.all(hits[~inside] == 0)
        phases_seen.append(tuple(starts[:20]))
    assert len(set(phases_seen)) == 3, "each epoch should have a fresh phase and order"


def test_step_plan_covers_each_epoch_and_ranks_split_it(tiny_synthetic):
    ds = Dataset(tiny_synthetic)
    mix = train.Mixture(ds, ["chain0", "chain1"], [2500, 2500], seed=1)
    for world in (1, 2, 3):
        plan = train.StepPlan(mix, batch_size=4, world=world)
        assert plan.steps_per_epoch == int(np.ceil(5000 / (4 * BLOCK)))
        for epoch in range(2):
            seen = []
            for j in range(plan.steps_per_epoch):
                rows = plan.step(seed=1, step=epoch * plan.steps_per_epoch + j)
                starts, n_targets, comp, e = rows
                assert e == epoch and len(starts) == plan.rows
                shares = [plan.for_rank((starts, n_targets, comp), r) for r in range(world)]
                # ranks take disjoint rows whose union is the whole step
                assert sum(len(s[0]) for s in shares) == plan.rows
                merged = sorted((int(a), int(b)) for s in shares for a, b in zip(s[0], s[1]) if b > 0)
                assert merged == sorted((int(a), int(b)) for a, b in zip(starts, n_targets) if b > 0)
                seen += merged
            expected = mix.epoch_windows(seed=1, epoch=epoch)
            assert sorted(seen) == sorted(zip(expected[0].tolist(), expected[1].tolist()))
            assert sum(n for _, n in seen) == 5000


def test_equal_budgets_and_steps_across_k(tiny_synthetic, tmp_path):
    budget, epochs = 3000, 3
    steps, totals = set(), set()
    for k in (1, 2, 3):
        out = run_train(tiny_synthetic, tmp_path / f"k{k}", f"--k={k}",
                        f"--token_budget={budget}", f"--epochs={epochs}")
        done, config = read(os.path.join(out, "done")), read(os.path.join(out, "config.json"))
        quotas = config["trained_on"]["tokens"]
        assert sum(quotas.values()) == budget and len(quotas) == k
        assert max(quotas.values()) - min(quotas.values()) <= 1          # budget/K each
        assert done["tokens_per_component"] == {c: q * epochs for c, q in quotas.items()}
        steps.add(done["steps"])
        totals.add(done["tokens"])
        assert config["config"]["components"] == Dataset(tiny_synthetic).default_order[:k]
    assert len(steps) == 1 and len(totals) == 1 and totals.pop() == budget * epochs


@pytest.fixture(scope="module")
def eight_chains(tmp_path_factory):
    """Eight tiny chains: K up to 8 on the default order, the top five then the rest."""
    return make_synthetic(tmp_path_factory.mktemp("data8") / "synthetic8", "--n_components=8")


@pytest.mark.parametrize("k", [6, 8])
def test_k_beyond_five_trains_and_evaluates(eight_chains, tmp_path, k):
    out = run_train(eight_chains, tmp_path / f"k{k}", f"--k={k}", "--epochs=1")
    order = Dataset(eight_chains).default_order
    config = read(os.path.join(out, "config.json"))
    assert config["config"]["components"] == order[:k] and len(config["trained_on"]["tokens"]) == k
    evaluate.main([out, "--eval_windows=20", "--device=cpu"])
    result = read(os.path.join(out, "eval.json"))
    assert sorted(c for c, v in result["categories"].items() if v["in_mixture"]) == sorted(order[:k])
    unseen = [c for c, v in result["categories"].items() if not v["in_mixture"]]
    assert len(unseen) == 8 - k and all("context" in result["categories"][c] for c in unseen)


def test_beyond_five_every_components_quota_must_fit(eight_chains):
    ds = Dataset(eight_chains)
    smallest = min(ds.default_order, key=lambda c: ds.n_tokens(c, "train"))
    budget = 8 * ds.n_tokens(smallest, "train") + 8
    with pytest.raises(UserError, match=rf"asks [\d,]+ tokens of {smallest}, which has [\d,]+ train tokens; "
                                        r"use --token_budget=[\d,]+ or less"):
        train.main([f"--data_dir={eight_chains}", "--k=8", f"--token_budget={budget}", *TINY_MODEL,
                    "--print_run_dir=True"])


def test_host_and_device_window_gather_agree(tiny_synthetic):
    ds = Dataset(tiny_synthetic)
    mix = train.Mixture(ds, ["chain0"], [3000], seed=0)
    starts, n_targets, _ = mix.epoch_windows(seed=0, epoch=0)
    cpu = torch.device("cpu")
    host = WindowSource(mix.tokens, cpu, on_device=False).batch(starts, n_targets)
    dev = WindowSource(mix.tokens, cpu, on_device=True).batch(starts, n_targets)
    assert torch.equal(host[0], dev[0]) and torch.equal(host[1], dev[1])
    x, y = gather_windows(mix.tokens, starts, n_targets)
    assert np.array_equal(x[:, 1:], np.where(y[:, :-1] >= 0, y[:, :-1], x[:, 1:]))
    assert ((y >= 0).sum(1) == n_targets).all()


def test_the_epoch_plan_uploaded_once_gives_every_steps_windows(tiny_synthetic):
    """The device path's per-epoch plan (one upload, no copy per step) gives each rank exactly the
    rows of the host path, across epoch boundaries, with the whole step's counts."""
    ds = Dataset(tiny_synthetic)
    mix = train.Mixture(ds, ["chain0", "chain1"], [1500, 1500], seed=3)
    cpu = torch.device("cpu")
    for world in (1, 2):
        plan = train.StepPlan(mix, batch_size=4, world=world)
        for rank in range(world):
            host, dev = (WindowSource(mix.tokens, cpu, on_device=d, tagged=True) for d in (False, True))
            for step in range(3 * plan.steps_per_epoch):
                a, b = host.step_batch(plan, 5, step, rank), dev.step_batch(plan, 5, step, rank)
                assert all(torch.equal(u, v) for u, v in zip(a[:3], b[:3]))          # x, y and the tags
                assert np.array_equal(a[3], b[3]) and np.array_equal(a[4], b[4]) and a[5] == b[5]
                assert len(a[3]) == plan.rows and a[0].shape[0] == len(a[2]) == plan.rows // world
                starts, _, comp, _ = plan.step(5, step)      # a row's tag is its window's component
                assert a[2].tolist() == np.maximum(comp[rank::world], 0).tolist()
                for d in (False, True):                      # an untagged run moves no tags
                    assert WindowSource(mix.tokens, cpu, on_device=d).step_batch(plan, 5, step, rank)[2] is None


@pytest.mark.parametrize("autocast", [False, True])
def test_chunked_output_layer_matches_the_full_logits(autocast, monkeypatch):
    """loss_impl=chunked (never the full logits) gives the full path's per-token losses and
    gradients: to float32 rounding, and within bf16 rounding under bf16 autocast."""
    import model as model_module
    monkeypatch.setattr(model_module, "VOCAB_CHUNK", 300)        # several chunks, a ragged last one
    torch.manual_seed(0)
    net = GPT(GPTConfig(vocab_size=1000, n_layer=2, n_head=2, n_embd=32))
    x, y = torch.randint(0, 1000, (4, BLOCK)), torch.randint(0, 1000, (4, BLOCK))
    y[1, 50:] = -1
    results = {}
    for impl in ("full", "chunked"):
        net.loss_impl = impl
        net.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            losses = net(x, y)
        (losses.sum() / (y >= 0).sum()).backward()
        results[impl] = losses.detach(), {n: p.grad.clone() for n, p in net.named_parameters()}
    (ref, ref_grads), (ours, our_grads) = results["full"], results["chunked"]
    assert torch.all(ours[1, 50:] == 0)
    assert (ours - ref).abs().max() < 1e-5
    gaps = [((our_grads[n] - g).norm() / g.norm()).item() for n, g in ref_grads.items()]
    assert max(gaps) < (2e-2 if autocast else 1e-5), gaps
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        inference = {}
        for impl in ("full", "chunked"):                     # inference always writes the logits
            net.loss_impl = impl
            inference[impl] = net(x, y)
    assert torch.equal(inference["full"], inference["chunked"])


# ----------------------------------------------------------------------------- resume

def test_resume_after_crash_is_bit_identical(tiny_synthetic, tmp_path, monkeypatch):
    args = ["--k=2", "--token_budget=3000", "--epochs=2", "--ckpt_interval=4", "--dropout=0.1"]
    straight = run_train(tiny_synthetic, tmp_path / "straight", *args)

    real_lr = train.learning_rate_at
    def crash_at_step_10(step, cfg, total):
        if step == 10:
            raise KeyboardInterrupt                     # like kill -9 between checkpoints
        return real_lr(step, cfg, total)
    monkeypatch.setattr(train, "learning_rate_at", crash_at_step_10)
    with pytest.raises(KeyboardInterrupt):
        run_train(tiny_synthetic, tmp_path / "resumed", *args)
    assert torch.load(tmp_path / "resumed" / "ckpt.pt", weights_only=False)["step"] == 8
    monkeypatch.setattr(train, "learning_rate_at", real_lr)
    taken, real_step = [], train.train_step             # the resumed process takes steps 8.. only

    def counted(*a, **k):
        taken.append(1)
        return real_step(*a, **k)
    monkeypatch.setattr(train, "train_step", counted)
    resumed = run_train(tiny_synthetic, tmp_path / "resumed", *args)
    total = read(os.path.join(resumed, "done"))["steps"]
    assert len(taken) == total - 8, (len(taken), total)

    a = torch.load(os.path.join(straight, "ckpt.pt"), weights_only=False)
    b = torch.load(os.path.join(resumed, "ckpt.pt"), weights_only=False)
    assert a["step"] == b["step"]
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    assert deterministic_fields(read_log(straight)) == deterministic_fields(read_log(resumed))
    assert read(os.path.join(straight, "done"))["tokens_per_component"] == \
        read(os.path.join(resumed, "done"))["tokens_per_component"]


def _spawn(data_dir, out_dir, *extra):
    cmd = [sys.executable, "train.py", f"--data_dir={data_dir}", f"--out_dir={out_dir}",
           *TINY_MODEL, *extra]
    return subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for_step(out_dir, step, proc, timeout=60):
    path = os.path.join(out_dir, "log.jsonl")
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if os.path.exists(path):
            with open(path) as f:
                if any(json.loads(l)["step"] >= step for l in f if l.strip()):
                    return
        time.sleep(0.05)
    raise AssertionError(f"run did not reach step {step}: {proc.communicate()}")


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_killed_process_resumes_to_the_same_weights(tiny_synthetic, tmp_path, sig):
    # with dropout, a resume that does not restore the RNG state ends on other weights
    args = ["--k=2", "--token_budget=6000", "--epochs=3", "--ckpt_interval=7", "--dropout=0.1"]
    straight = run_train(tiny_synthetic, tmp_path / "straight", *args)
    out = str(tmp_path / "killed")
    proc = _spawn(tiny_synthetic, out, *args)
    _wait_for_step(out, 12, proc)
    proc.send_signal(sig)
    proc.communicate(timeout=60)
    if sig == signal.SIGTERM:
        assert proc.returncode == 143                       # saved a checkpoint, then exited
        ckpt = torch.load(os.path.join(out, "ckpt.pt"), weights_only=False)
        assert ckpt["step"] == max(r["step"] for r in read_log(out))
    assert not os.path.exists(os.path.join(out, "done"))
    saved = torch.load(os.path.join(out, "ckpt.pt"), weights_only=False)["step"]
    proc = _spawn(tiny_synthetic, out, *args)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr
    assert f"from step {saved:,}/" in stdout                # where the checkpoint was, not step 0
    steps = [int(m) for m in re.findall(r"^step +(\d+)/", stdout, flags=re.M)]
    assert steps and steps[0] == saved + 1 and len(steps) == steps[-1] - saved    # every later step, once
    a = torch.load(os.path.join(straight, "ckpt.pt"), weights_only=False)["model"]
    b = torch.load(os.path.join(out, "ckpt.pt"), weights_only=False)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert deterministic_fields(read_log(straight)) == deterministic_fields(read_log(out))


def test_finished_run_does_nothing(tiny_synthetic, tmp_path, capsys):
    out = run_train(tiny_synthetic, tmp_path / "run", "--token_budget=1000", "--epochs=1")
    before = os.path.getmtime(os.path.join(out, "ckpt.pt"))
    capsys.readouterr()
    run_train(tiny_synthetic, tmp_path / "run", "--token_budget=1000", "--epochs=1")
    assert "already finished" in capsys.readouterr().out
    assert os.path.getmtime(os.path.join(out, "ckpt.pt")) == before


def test_run_folder_explains_itself(tiny_synthetic, tmp_path):
    out = run_train(tiny_synthetic, tmp_path / "run", "--k=2", "--token_budget=2000", "--epochs=2")
    config = read(os.path.join(out, "config.json"))
    assert config["config"]["k"] == 2 and config["config"]["seed"] == train.seed
    assert config["provenance"]["git_commit"] and "torch" in config["provenance"]["versions"]
    log = read_log(out)
    kinds = {r["kind"] for r in log}
    assert kinds == {"train", "val"}
    last = [r for r in log if r["kind"] == "train"][-1]
    assert {"loss", "lr", "tok_per_s", "mfu", "tokens"} <= set(last)
    assert last["step"] == config["schedule"]["steps"]


# ----------------------------------------------------------------------------- DDP

def test_two_rank_gloo_ddp_matches_one_process(tiny_synthetic, tmp_path):
    args = ["--k=2", "--token_budget=3000", "--epochs=2", "--batch_size=6"]
    single = run_train(tiny_synthetic, tmp_path / "single", *args)
    out = str(tmp_path / "ddp")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "train.py", f"--data_dir={tiny_synthetic}", f"--out_dir={out}", *TINY_MODEL, *args]
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=240, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert read(os.path.join(out, "done"))["tokens_per_component"] == \
        read(os.path.join(single, "done"))["tokens_per_component"]
    assert read(os.path.join(out, "config.json"))["runtime"]["world_size"] == 2
    a = torch.load(os.path.join(single, "ckpt.pt"), weights_only=False)["model"]
    b = torch.load(os.path.join(out, "ckpt.pt"), weights_only=False)["model"]
    for key in a:   # same windows, same loss normalisation: equal up to float reduction order
        assert torch.allclose(a[key], b[key], atol=2e-4, rtol=1e-3), key
    # every step's logged loss: the mean over the step's targets, each rank having taken its half
    # of the rows (a rank training on every row would log twice the loss)
    losses = [[r["loss"] for r in read_log(run) if r["kind"] == "train"] for run in (single, out)]
    assert len(losses[0]) == len(losses[1]) > 5
    np.testing.assert_allclose(losses[1], losses[0], rtol=2e-3)
    ds = Dataset(tiny_synthetic)
    config = read(os.path.join(out, "config.json"))
    plan = train.StepPlan(train.Mixture(ds, config["config"]["components"],
                                        list(config["trained_on"]["tokens"].values()), 1337), 6, 2)
    rows = [len(plan.for_rank(plan.step(1337, 0)[:3], rank)[0]) for rank in (0, 1)]
    assert rows == [plan.rows // 2] * 2 and config["schedule"]["rows_per_step"] == plan.rows


# ----------------------------------------------------------------------------- bad input

# Each bad setting: the arguments, then the message train.py must give in one line, before it
# writes anything. Grouped by what the check protects.
BAD_CONFIGS = """
# names and types of keys, files
--n_layers=3              | unknown config key 'n_layers'
--n_layer=two             | config key 'n_layer' expects int
--block_size=64           | unknown config key 'block_size'
config/does_not_exist.py  | not found
# the mixture: components, k, weights, arm
--components=chain0,nope  | unknown component 'nope'
--k=9                     | k=9
--k=3 --components=chain1 | k=3 but components names 1
--weights=[1,2] --k=3     | weights=
--weights=1,nan --k=2     | finite positive numbers
--weights=1,inf --k=2     | finite positive numbers
--weights=1,abc --k=2     | finite positive numbers
--arm=control --k=1       | arm=control is a twin of a mixture of K >= 2
--arm=tagged --k=1        | arm=tagged is a twin of a mixture of K >= 2
--arm=ctrl --k=2          | arm='ctrl': use one of mixture, control, exposure, tagged
--device=mps              | device='mps': use auto, cpu, cuda or cuda:N
# the budget and the schedule
--token_budget=100000000  | train tokens; use --token_budget=
--token_budget=-5         | token_budget=-5
--token_budget=1          | less than one step
--batch_size=0            | batch_size=0
--epochs=0                | epochs=0
# the model, the seed and the runtime
--n_embd=30 --n_head=4    | must be a multiple of n_head=4
--dropout=1.5             | dropout=1.5: use 0 <= dropout < 1
--seed=-1                 | seed=-1: use a seed >= 0
--seed=1e30               | seed=1000000000000000019884624838656: use a seed >= 0
--beta1=2                 | beta1=2.0: use 0 <= beta1 < 1
--weight_decay=-0.1       | weight_decay=-0.1: use weight_decay >= 0
--device=gpu              | device='gpu'
--dtype=float16           | use auto, bfloat16 or float32
--compile=maybe           | compile=maybe: use auto, True or False
--fused_adamw=sometimes   | fused_adamw=sometimes: use auto, True or False
"""


@pytest.mark.parametrize("args, message", [
    (line.split(" | ")[0].split(), line.split(" | ")[1])
    for line in BAD_CONFIGS.strip().splitlines() if not line.startswith("#")])
def test_bad_config_gives_one_clear_message(tiny_synthetic, tmp_path, args, message):
    with pytest.raises(UserError, match=re.escape(message)) as e:
        run_train(tiny_synthetic, tmp_path / "bad", *args)
    assert "\n" not in str(e.value) and not os.path.exists(tmp_path / "bad")   # nothing written


@pytest.mark.parametrize("text, expected", [("False", False), ("false", False), ("off", False), ("no", False),
                                            ("True", True), ("yes", True), ("on", True), ("auto", "auto")])
def test_a_switch_reads_every_spelling_of_true_and_false(text, expected):
    """bool("false") is True: a switch spelled in words must never turn itself on."""
    from configurator import configure
    config = configure({"compile": "auto", "force": False}, [f"--compile={text}", f"--force={text}"]
                       if text != "auto" else ["--compile=auto"])
    assert config["compile"] is expected if text != "auto" else config["compile"] == "auto"
    if text != "auto":
        assert config["force"] is expected
    with pytest.raises(UserError, match="device='0': use auto, cpu, cuda or cuda:N"):   # no switch either
        resolve_device(configure({"device": "auto"}, ["--device=0"])["device"])


@pytest.mark.parametrize("text", ["020e81", "123456", "1e5", "0x1f", "12_3", "[1]", "None", "3.5"])
def test_a_string_key_keeps_the_text_as_typed(text):
    """An id prefix of digits is text: --group=020e81 must not become the float 2e+81."""
    from configurator import configure
    assert configure({"group": "", "run_name": ""}, [f"--group={text}", f"--run_name={text}"]) == \
        {"group": text, "run_name": text}


def test_missing_data_names_the_prepare_command(tmp_path):
    result = subprocess.run([sys.executable, "train.py", f"--data_dir={tmp_path}/synthetic"],
                            cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "python prepare.py --source=synthetic" in lines[0]


def test_torn_log_line_and_rebuilt_data_on_resume(tiny_synthetic, tmp_path):
    args = ["--token_budget=2000", "--epochs=2", "--ckpt_interval=3"]
    out = tmp_path / "torn"
    run_train(tiny_synthetic, out, *args)
    os.remove(out / "done")
    ckpt = torch.load(out / "ckpt.pt", weights_only=False)
    ckpt["step"] = 3                                   # pretend it died after step 3's checkpoint...
    with open(out / "log.jsonl", "a") as f:
        f.write('{"kind": "train", "step": 9')          # ...in the middle of writing a log line
    torch.save(ckpt, out / "ckpt.pt")
    run_train(tiny_synthetic, out, *args)              # resumes instead of failing on the log
    assert os.path.exists(out / "done")
    assert [r["step"] for r in read_log(out) if r["kind"] == "train"][-1] == read(out / "done")["steps"]
    # a run started on one build of the data is not resumed on another
    os.remove(out / "done")
    meta_path = os.path.join(tiny_synthetic, "meta.json")
    config = read(out / "config.json")
    config["identity"] = "0" * 64                      # as if made from another build of the data
    with open(out / "config.json", "w") as f:
        json.dump(config, f)
    with pytest.raises(UserError, match="different build"):
        run_train(tiny_synthetic, out, *args)
    assert os.path.exists(meta_path)


def test_changed_config_on_existing_run_is_refused(tiny_synthetic, tmp_path):
    run_train(tiny_synthetic, tmp_path / "run", "--token_budget=1000", "--epochs=1",
              "--ckpt_interval=1000", "--eval_interval=1000")
    os.remove(tmp_path / "run" / "done")
    with pytest.raises(UserError, match="holds a different run \\(n_embd: 16 there, 32 now\\)"):
        run_train(tiny_synthetic, tmp_path / "run", "--token_budget=1000", "--epochs=1",
                  "--n_embd=32")


def test_nan_loss_stops_with_a_message_and_keeps_the_last_good_checkpoint(
        tiny_synthetic, tmp_path, monkeypatch):
    real_lr = train.learning_rate_at
    monkeypatch.setattr(train, "learning_rate_at",
                        lambda step, cfg, total: float("nan") if step >= 5 else real_lr(step, cfg, total))
    with pytest.raises(UserError, match="diverged at step 6"):
        run_train(tiny_synthetic, tmp_path / "nan", "--token_budget=2000", "--ckpt_interval=3",
                  "--log_interval=2")
    assert not os.path.exists(tmp_path / "nan" / "done")
    ckpt = torch.load(tmp_path / "nan" / "ckpt.pt", weights_only=False)
    assert ckpt["step"] == 3
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values())


# ----------------------------------------------------------------------------- learning

def test_tiny_model_learns_a_chain_to_near_its_entropy_rate(tmp_path):
    from evaluate import bayes_losses
    from harness.data import fixed_windows
    data = make_synthetic(tmp_path / "one", "--n_components=1", "--split_tokens=(60000,3000,30000)",
                          "--seed=11")
    out = str(tmp_path / "run")
    train.main([f"--data_dir={data}", f"--out_dir={out}", "--device=cpu",
                "--cpu_threads=1", "--n_layer=1", "--n_head=2", "--n_embd=32", "--batch_size=8",
                "--epochs=4", "--learning_rate=1e-2", "--min_lr=1e-3", "--warmup_iters=10",
                "--eval_interval=1000", "--log_interval=100", "--val_windows=50"])
    ds = Dataset(data)
    chains = ds.chains()
    starts, _ = fixed_windows(ds, "chain0", "test", 250, seed=0)
    x, y = gather_windows(ds.tokens("chain0", "test"), starts)
    model = train.GPT(train.GPTConfig(vocab_size=ds.vocab_size, n_layer=1, n_head=2, n_embd=32))
    model.load_state_dict(torch.load(os.path.join(out, "ckpt.pt"), weights_only=False)["model"])
    with torch.no_grad():
        model_xe = float(model.eval()(torch.from_numpy(x), torch.from_numpy(y)).mean())
    # the chain's own loss on the same held-out windows, and its entropy rate
    windows = np.concatenate([x, y[:, -1:]], axis=1)
    oracle_xe = float(bayes_losses(windows, chains["transition"], chains["stationary"], np.ones(1)).mean())
    entropy_rate = float(chains["entropy_rate"][0])
    assert abs(oracle_xe - entropy_rate) < 0.05 * entropy_rate
    assert model_xe < 1.05 * oracle_xe, (model_xe, oracle_xe, entropy_rate)
    assert model_xe > 0.99 * oracle_xe          # held out: no model beats the true chain
