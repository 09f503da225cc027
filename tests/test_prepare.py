"""
prepare.py and the shared reader (data.Dataset, fixed_windows, doc_windows): layout and meta,
document boundaries, the synthetic chains against their own samples, determinism, the arXiv
path on local files and through a faked hub, GPT-2 token ids, and the one-line errors.
Everything runs on tiny data the tests write themselves (no network, seconds on CPU).
"""
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from harness import data
from harness import mixture
import prepare
from configurator import UserError
from harness.data import BLOCK, SPLITS, WINDOW
from conftest import ROOT, TINY_SYNTHETIC, make_synthetic

ARXIV_ARGS = ["--tokenizer=r50k_base"]


@pytest.fixture(autouse=True)
def hf_cache_in_tmp(tmp_path, monkeypatch):
    """datasets' cache for local parquet/jsonl loads goes to tmp, not ~/.cache."""
    import datasets
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf_cache"))


# ----------------------------------------------------------------------------------------------
# helpers

def check_layout(data_dir):
    """Files, sizes, meta.json and stats.json agree with each other. Returns meta."""
    meta = json.load(open(os.path.join(data_dir, "meta.json")))
    for key in ("vocab_size", "eot", "dtype", "components", "default_order", "splits"):
        assert key in meta, key
    assert meta["dtype"] == "uint16"
    assert meta["vocab_size"] <= 65536 and 0 <= meta["eot"] < meta["vocab_size"]
    assert set(meta["splits"]) == set(meta["components"])
    assert set(meta["default_order"]) <= set(meta["components"])
    assert sorted(meta["default_order"]) == sorted(meta["components"])       # every component, in order
    for comp in meta["components"]:
        assert set(meta["splits"][comp]) == set(SPLITS)
        for split in SPLITS:
            info = meta["splits"][comp][split]
            b = os.path.join(data_dir, comp, f"{split}.bin")
            i = os.path.join(data_dir, comp, f"{split}.idx")
            assert os.path.getsize(b) == info["bin_bytes"] == 2 * info["tokens"]
            assert os.path.getsize(i) == info["idx_bytes"] == 8 * (info["docs"] + 1)
            tokens = np.fromfile(b, dtype=np.uint16)
            offsets = np.fromfile(i, dtype=np.int64)
            assert len(tokens) == info["tokens"] and len(offsets) == info["docs"] + 1
            assert info["docs"] > 0
            assert tokens.max() < meta["vocab_size"]
    # no stray component folders, no temp leftovers
    folders = {e for e in os.listdir(data_dir) if os.path.isdir(os.path.join(data_dir, e))}
    assert folders == set(meta["components"])
    assert not [e for e in os.listdir(data_dir) if e.startswith(".tmp")]

    stats = json.load(open(os.path.join(data_dir, "stats.json")))
    rows = {(r["category"], r["split"]): r for r in stats["rows"]}
    assert len(rows) == len(stats["rows"]) == 3 * len(meta["components"])
    for comp in meta["components"]:
        for split in SPLITS:
            r, info = rows[(comp, split)], meta["splits"][comp][split]
            assert (r["docs"], r["tokens"]) == (info["docs"], info["tokens"])
    train = {c: meta["splits"][c]["train"]["tokens"] for c in meta["components"]}
    order = stats["default_order"]
    top5, rest = order[:5], order[5:]
    assert [train[c] for c in top5] == sorted(train[c] for c in top5)      # ascending
    assert len(set(order)) == len(order) == len(train)
    assert all(train[c] <= min(train[t] for t in top5) for c in rest)      # really the top five
    assert [train[c] for c in rest] == sorted((train[c] for c in rest), reverse=True)   # then largest first
    assert meta["default_order"] == order
    assert stats["default_budget"] == train[top5[0]]
    return meta


def check_documents(data_dir):
    """Every .idx offset is a document start, every document ends with its single EOT."""
    meta = json.load(open(os.path.join(data_dir, "meta.json")))
    eot = meta["eot"]
    for comp in meta["components"]:
        for split in SPLITS:
            tokens = np.fromfile(os.path.join(data_dir, comp, f"{split}.bin"), dtype=np.uint16)
            offsets = np.fromfile(os.path.join(data_dir, comp, f"{split}.idx"), dtype=np.int64)
            assert offsets[0] == 0 and offsets[-1] == len(tokens)
            assert np.all(np.diff(offsets) > 1)            # strictly increasing, non-empty docs
            assert np.all(tokens[offsets[1:-1] - 1] == eot)  # token before each later start
            assert np.all(tokens[offsets[1:] - 1] == eot)    # each document ends with EOT
            # EOT nowhere else: exactly one per document, and only at the ends
            assert np.array_equal(np.flatnonzero(tokens == eot), offsets[1:] - 1)


def dataset_files(data_dir):
    """{relative path: bytes} for every file; meta.json without its time/host fields; not the
    readers' lock (.readers, made by whoever opened the dataset)."""
    out = {}
    for root, _, names in os.walk(data_dir):
        for name in (n for n in names if n != ".readers"):
            path = os.path.join(root, name)
            rel = os.path.relpath(path, data_dir)
            data = open(path, "rb").read()
            if rel == "meta.json":
                meta = json.loads(data)
                meta.pop("created"), meta.pop("provenance")
                data = json.dumps(meta, sort_keys=True).encode()
            out[rel] = data
    return out


def leftovers(parent):
    return [e for e in os.listdir(parent) if e.startswith(".tmp") or e.endswith(".old")]


# ----------------------------------------------------------------------------------------------
# 1, 2: layout, meta, stats, document boundaries

def test_synthetic_layout_and_meta(tiny_synthetic):
    meta = check_layout(tiny_synthetic)
    assert meta["source"] == "synthetic"
    assert meta["components"] == ["chain0", "chain1", "chain2"]
    assert meta["vocab_size"] == 9 and meta["eot"] == 8       # synth_vocab=8, EOT = 8
    for comp in meta["components"]:
        for split, target in zip(SPLITS, (6000, 1500, 3000)):
            n = meta["splits"][comp][split]["tokens"]
            assert target <= n <= target + 400 + 1 + 400      # overshoot < one document


def test_synthetic_documents(tiny_synthetic):
    check_documents(tiny_synthetic)
    meta = json.load(open(os.path.join(tiny_synthetic, "meta.json")))
    for comp in meta["components"]:
        lengths = np.diff(np.fromfile(os.path.join(tiny_synthetic, comp, "train.idx"), np.int64))
        assert lengths.min() >= 150 + 1 and lengths.max() <= 400 + 1   # doc_tokens + EOT


def test_top_five_with_more_components(tmp_path):
    path = make_synthetic(tmp_path / "syn7", "--n_components=7", "--split_tokens=(3000,300,300)")
    meta = check_layout(path)
    check_documents(path)
    train = {c: meta["splits"][c]["train"]["tokens"] for c in meta["components"]}
    assert len(set(train.values())) == 7           # distinct sizes: the selection is not trivial
    largest_first = sorted(train, key=lambda c: -train[c])
    expected = sorted(largest_first[:5], key=lambda c: train[c]) + largest_first[5:]
    assert meta["default_order"] == expected


def test_the_default_order_is_the_top_five_smallest_first_then_the_rest_largest_first():
    tokens = {"a": 50, "b": 10, "c": 70, "d": 30, "e": 90, "f": 20, "g": 60}
    splits = {c: {s: {"docs": 1, "tokens": t if s == "train" else 1} for s in SPLITS}
              for c, t in tokens.items()}
    stats = prepare.dataset_composition(splits)
    assert stats["default_order"] == ["d", "a", "g", "c", "e", "f", "b"]
    assert stats["default_budget"] == 30


def test_check_documents_catches_a_stray_eot(tiny_synthetic, tmp_path):
    """The boundary check has teeth: an EOT inside a document fails it."""
    copy = tmp_path / "copy"
    shutil.copytree(tiny_synthetic, copy)
    path = copy / "chain1" / "val.bin"
    tokens = np.fromfile(path, dtype=np.uint16)
    tokens[5] = 8
    tokens.tofile(path)
    with pytest.raises(AssertionError):
        check_documents(str(copy))


# ----------------------------------------------------------------------------------------------
# 3: the synthetic chains

def test_chains_are_ergodic_and_saved_consistently(tiny_synthetic):
    ds = data.Dataset(tiny_synthetic)
    chains = ds.chains()
    assert list(chains["names"]) == ds.components
    P, pi, h = chains["transition"], chains["stationary"], chains["entropy_rate"]
    assert P.shape == (3, 8, 8) and pi.shape == (3, 8)
    assert np.all(P >= 0.02 / 8 * (1 - 1e-9))                  # the uniform floor
    assert np.allclose(P.sum(-1), 1, atol=1e-12)
    for k in range(3):
        assert np.isrealobj(pi[k]) and np.all(pi[k] > 0)
        assert np.isclose(pi[k].sum(), 1, atol=1e-12)
        assert np.allclose(pi[k] @ P[k], pi[k], atol=1e-12)
        # pi is the limit of the chain from any start (ergodic: unique, attracting); the uniform
        # floor bounds the second eigenvalue by 1 - floor = 0.98, so 3000 steps are within 1e-10
        assert np.allclose(np.linalg.matrix_power(P[k], 3000), pi[k][None, :], atol=1e-10)
        rate = -(pi[k][:, None] * P[k] * np.log(P[k])).sum()
        assert np.isclose(h[k], rate, rtol=1e-12)
        assert np.isclose(ds.meta["entropy_rate"][ds.components[k]], rate, rtol=1e-12)
        assert 0 < rate < np.log(8)


def test_samples_follow_the_saved_chains(tmp_path):
    """Long stream: empirical transitions and first tokens match the saved matrix and pi."""
    path = make_synthetic(tmp_path / "long", "--n_components=2", "--synth_vocab=5",
                          "--doc_tokens=(20,80)", "--split_tokens=(200000,500,500)",
                          "--concentration=0.5", "--seed=3")
    ds = data.Dataset(path)
    chains = ds.chains()
    V = 5
    counts, firsts = [], []
    for comp in ds.components:
        tokens = np.asarray(ds.tokens(comp, "train"), dtype=np.int64)
        offsets = ds.offsets(comp, "train")
        a, b = tokens[:-1], tokens[1:]
        inside = (a != V) & (b != V)                     # transitions within documents
        c = np.zeros((V, V))
        np.add.at(c, (a[inside], b[inside]), 1)
        counts.append(c)
        firsts.append(np.bincount(tokens[offsets[:-1]], minlength=V))

    def max_z(c, P):
        n = c.sum(1, keepdims=True)
        rows = n[:, 0] >= 1000
        sd = np.sqrt(P * (1 - P) / n)
        return np.max(np.abs(c / n - P)[rows] / sd[rows]), rows.sum()

    for k in range(2):
        P, pi = chains["transition"][k], chains["stationary"][k]
        z, rows = max_z(counts[k], P)
        assert rows >= 3 and z < 5.0, (k, z)                       # sampling error only
        # the comparison has power: the other chain's matrix is far off
        z_other, _ = max_z(counts[k], chains["transition"][1 - k])
        assert z_other > 20, z_other
        # first tokens ~ stationary (chi-square, V-1 = 4 dof; 30 is p ~ 1e-5)
        f = firsts[k]
        n = f.sum()
        assert n >= 2000
        chi2 = ((f - n * pi) ** 2 / (n * pi)).sum()
        assert chi2 < 30, chi2
        # and all tokens together are ~ stationary too (a loose check: correlated samples)
        occ = counts[k].sum(1) / counts[k].sum()
        assert np.abs(occ - pi).max() < 0.02


# ----------------------------------------------------------------------------------------------
# 4: determinism

def test_same_seed_same_bytes_different_seed_different_bytes(tmp_path, monkeypatch):
    a = make_synthetic(tmp_path / "a" / "synthetic")
    import time
    later = time.time() + 86400 + 3.0                     # "a day later": no timestamps in files
    monkeypatch.setattr(time, "time", lambda: later)
    b = make_synthetic(tmp_path / "b" / "synthetic")
    monkeypatch.undo()
    c = make_synthetic(tmp_path / "c" / "synthetic", "--seed=8")
    fa, fb, fc = dataset_files(a), dataset_files(b), dataset_files(c)
    assert len(fa) == 3 * 3 * 2 + 3                       # bins, idxs, meta, stats, chains
    assert fa.keys() == fb.keys() == fc.keys()
    for rel in fa:
        assert fa[rel] == fb[rel], rel
    for rel in fa:
        if rel.endswith(".bin") or rel == "chains.npz":
            assert fa[rel] != fc[rel], rel


# ----------------------------------------------------------------------------------------------
# 5, 6: the arXiv path on local files, and through a faked hub

TEXTS = {   # category -> {split: [texts]}
    "cs.PL": {"train": ["Types are propositions, programs are proofs.",
                        "Gradual typing: the <|endoftext|> string is just text here.",
                        "Monads\tcompose; effects don't."],
              "validation": ["A lambda calculus with λx. x and ∀α. α → α."],
              "test": ["Let-polymorphism in ML."]},
    "math.GR": {"train": ["Every finite group of prime order is cyclic.", "Über Gruppen: 群論."],
                "validation": ["The braid group B_3 ≅ ⟨a, b | aba = bab⟩."],
                "test": ["Sylow theorems.\nNewline inside."]},
    "cs.DS": {"train": ["Skip lists in O(log n) expected time."],
              "validation": ["Van Emde Boas trees."],
              "test": ["Planar graph labelling schemes with 1.5 log n bits.", "Second test doc."]},
    "cs.AI": {"train": ["Only in train: dropped because it has no val/test docs."],
              "validation": [], "test": []},
}
HF = {"train": "train", "validation": "val", "test": "test"}


def write_arxiv_files(folder, fmt, suffix=""):
    """train/validation/test files in the dataset schema; documents interleaved by category
    (every text with `suffix` appended: another dataset in the same schema)."""
    import datasets
    os.makedirs(folder, exist_ok=True)
    for hf_split in HF:
        # round-robin over categories: interleaved, each category's documents in their order
        rows = [(TEXTS[c][hf_split][i] + suffix, prepare.ARXIV_LABELS.index(c))
                for i in range(3) for c in TEXTS if i < len(TEXTS[c][hf_split])]
        texts, labels = [r[0] for r in rows], [r[1] for r in rows]
        if fmt == "parquet":
            ds = datasets.Dataset.from_dict(
                {"text": texts, "label": labels},
                features=datasets.Features({"text": datasets.Value("string"),
                                            "label": datasets.ClassLabel(names=prepare.ARXIV_LABELS)}))
            ds.to_parquet(os.path.join(folder, f"{hf_split}.parquet"))
        else:
            with open(os.path.join(folder, f"{hf_split}.jsonl"), "w") as f:
                for t, l in zip(texts, labels):
                    f.write(json.dumps({"text": t, "label": l}) + "\n")
    return str(folder)


def decoded_docs(data_dir, comp, split):
    import tiktoken
    enc = tiktoken.get_encoding("r50k_base")
    tokens = np.fromfile(os.path.join(data_dir, comp, f"{split}.bin"), dtype=np.uint16)
    offsets = np.fromfile(os.path.join(data_dir, comp, f"{split}.idx"), dtype=np.int64)
    return [enc.decode(tokens[s:e - 1].tolist()) for s, e in zip(offsets[:-1], offsets[1:])]


@pytest.mark.parametrize("fmt", ["parquet", "jsonl"])
def test_arxiv_local_files(tmp_path, tiktoken_cache, fmt):
    src = write_arxiv_files(tmp_path / "src", fmt)
    out = str(tmp_path / "arxiv")
    prepare.main([f"--data_files={src}", f"--data_dir={out}", *ARXIV_ARGS])
    meta = check_layout(out)
    check_documents(out)
    assert meta["source"] == "arxiv" and meta["tokenizer"] == "r50k_base"
    assert meta["vocab_size"] == 50257 and meta["eot"] == 50256
    assert meta["components"] == ["math.GR", "cs.PL", "cs.DS"]    # label order; cs.AI dropped
    for comp in meta["components"]:
        for hf_split, split in HF.items():
            assert meta["splits"][comp][split]["docs"] == len(TEXTS[comp][hf_split])
            assert decoded_docs(out, comp, split) == TEXTS[comp][hf_split]
    # "<|endoftext|>" inside a text is ordinary text, never the separator (check_documents)
    assert "<|endoftext|>" in decoded_docs(out, "cs.PL", "train")[1]
    assert meta["origin"]["data_files"]["train"][0].endswith(f"train.{fmt}")


def test_arxiv_parquet_and_jsonl_and_split_spec_agree(tmp_path, tiktoken_cache):
    pq = write_arxiv_files(tmp_path / "pq", "parquet")
    js = write_arxiv_files(tmp_path / "js", "jsonl")
    spec = ",".join(f"{s}={os.path.join(js, s + '.jsonl')}" for s in HF)
    outs = []
    for i, files in enumerate([pq, js, spec]):
        outs.append(str(tmp_path / f"out{i}"))
        prepare.main([f"--data_files={files}", f"--data_dir={outs[-1]}", *ARXIV_ARGS])
    files = [{k: v for k, v in dataset_files(o).items() if k.endswith((".bin", ".idx"))}
             for o in outs]
    assert len(files[0]) == 3 * 3 * 2
    assert files[0] == files[1] == files[2]


def test_realtext_end_to_end(tmp_path, tiktoken_cache, realtext):
    import datasets
    out = str(tmp_path / "arxiv")
    prepare.main([f"--data_files={realtext}", f"--data_dir={out}", *ARXIV_ARGS])
    meta = check_layout(out)
    check_documents(out)
    assert set(meta["components"]) == {"cs.PL", "cs.DS", "math.ST", "cs.IT", "math.GR"}
    # by train words in the sample's README: cs.IT < cs.PL < math.ST < cs.DS < math.GR
    assert meta["default_order"] == ["cs.IT", "cs.PL", "math.ST", "cs.DS", "math.GR"]
    docs = {c: {s: meta["splits"][c][s]["docs"] for s in SPLITS} for c in meta["components"]}
    assert sum(d for c in docs for d in docs[c].values()) == 31
    assert docs["cs.PL"] == {"train": 5, "val": 1, "test": 1}
    for c in ("cs.DS", "math.ST", "cs.IT", "math.GR"):
        assert docs[c] == {"train": 4, "val": 1, "test": 1}
    ref = datasets.load_dataset("parquet", data_files={
        s: os.path.join(realtext, f"{s}.parquet") for s in HF})
    names = ref["train"].features["label"].names
    for hf_split, split in HF.items():
        for comp in meta["components"]:
            want = [r["text"] for r in ref[hf_split] if names[r["label"]] == comp]
            assert decoded_docs(out, comp, split) == want


def fake_hub(monkeypatch, local_folder):
    """datasets.load_dataset answers the hub call with what the local files give."""
    import datasets
    real = datasets.load_dataset
    calls = []

    def load_dataset(path, *args, **kwargs):
        if path == "ccdv/arxiv-classification":
            calls.append((path, args, kwargs))
            builder, files = prepare.resolve_data_files(local_folder)
            return real(builder, data_files=files)
        return real(path, *args, **kwargs)
    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    return calls


def test_hub_and_local_paths_write_the_same_files(tmp_path, tiktoken_cache, monkeypatch):
    """The hub serves other texts than the local copy: the hub path writes exactly what the local
    path writes from the hub's texts, and not the local copy's (it really went to the hub)."""
    src = write_arxiv_files(tmp_path / "src", "parquet")
    on_hub = write_arxiv_files(tmp_path / "on_hub", "parquet", suffix=" (as served by the hub)")
    local, hub, hub_default, hub_local = (str(tmp_path / n) for n in ("local", "hub", "hub_default", "hub_local"))
    prepare.main([f"--data_files={src}", f"--data_dir={local}", *ARXIV_ARGS])
    prepare.main([f"--data_files={on_hub}", f"--data_dir={hub_local}", *ARXIV_ARGS])
    calls = fake_hub(monkeypatch, on_hub)
    prepare.main([f"--data_dir={hub}", *ARXIV_ARGS])
    assert len(calls) == 1
    path, args, kwargs = calls[0]
    assert (path, args) == ("ccdv/arxiv-classification", ("no_ref",)) or \
        (path == "ccdv/arxiv-classification" and kwargs.get("name") == "no_ref")
    meta = check_layout(hub)
    assert meta["origin"]["hf_repo"] == "ccdv/arxiv-classification"
    assert meta["origin"]["hf_config"] == "no_ref"
    files = lambda d: {k: v for k, v in dataset_files(d).items() if k.endswith((".bin", ".idx"))}
    assert len(files(hub)) == 18 and files(hub) == files(hub_local) and files(hub) != files(local)
    prepare.main([f"--data_dir={hub_default}", "--hf_config=default", *ARXIV_ARGS])
    assert len(calls) == 2
    assert "default" in calls[1][1] or calls[1][2].get("name") == "default"
    assert "no_ref" not in calls[1][1]


# ----------------------------------------------------------------------------------------------
# 7: GPT-2 ids

def test_gpt2_ids_from_offline_cache(tiktoken_cache):
    import tiktoken
    enc = tiktoken.get_encoding("r50k_base")
    assert enc.encode_ordinary("hello world") == [31373, 995]
    assert enc.encode_ordinary(" the") == [262]
    assert enc.encode_ordinary("Hello") == [15496]
    assert enc.encode_ordinary("\n") == [198]
    assert enc.eot_token == 50256 and enc.n_vocab == 50257
    assert 50256 not in enc.encode_ordinary("<|endoftext|>")


# ----------------------------------------------------------------------------------------------
# 8: bad input -> one-line errors, nothing half-written

def one_line_error(argv):
    with pytest.raises(UserError) as e:
        prepare.main(argv)
    msg = str(e.value)
    assert "\n" not in msg and msg
    return msg


def test_unknown_category(tmp_path, tiktoken_cache):
    src = write_arxiv_files(tmp_path / "src", "parquet")
    out = tmp_path / "arxiv"
    msg = one_line_error([f"--data_files={src}", f"--data_dir={out}", "--categories=cs.XX",
                          *ARXIV_ARGS])
    assert "cs.XX" in msg and all(name in msg for name in prepare.ARXIV_LABELS)
    assert not out.exists() and not leftovers(tmp_path)


def test_named_categories(tmp_path, tiktoken_cache):
    """--categories restricts the components; a named one without docs in every split is an error."""
    src = write_arxiv_files(tmp_path / "src", "jsonl")
    out = tmp_path / "arxiv"
    msg = one_line_error([f"--data_files={src}", f"--data_dir={out}", "--categories=cs.AI,cs.PL",
                          *ARXIV_ARGS])
    assert "cs.AI" in msg and "cs.PL" not in msg and "no documents" in msg
    assert not out.exists() and not leftovers(tmp_path)
    prepare.main([f"--data_files={src}", f"--data_dir={out}", "--categories=cs.DS,cs.PL",
                  *ARXIV_ARGS])
    meta = check_layout(str(out))
    assert meta["components"] == ["cs.DS", "cs.PL"]
    assert decoded_docs(str(out), "cs.DS", "test") == TEXTS["cs.DS"]["test"]


def test_hub_unreachable(tmp_path, monkeypatch, tiktoken_cache):
    import datasets

    def offline(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'ccdv/arxiv-classification' on the Hub\n(details)")
    monkeypatch.setattr(datasets, "load_dataset", offline)
    out = tmp_path / "arxiv"
    msg = one_line_error([f"--data_dir={out}", *ARXIV_ARGS])
    assert "--data_files" in msg and "ccdv/arxiv-classification" in msg
    assert "ConnectionError" in msg
    assert not out.exists() and not leftovers(tmp_path)


@pytest.mark.parametrize("missing", ["text", "label"])
def test_local_files_missing_a_column(tmp_path, tiktoken_cache, missing):
    import datasets
    src = tmp_path / "src"
    src.mkdir()
    cols = {"text": ["a paper"], "label": [3], "abstract": ["x"]}
    del cols[missing]
    for s in HF:
        datasets.Dataset.from_dict(cols).to_parquet(str(src / f"{s}.parquet"))
    out = tmp_path / "arxiv"
    msg = one_line_error([f"--data_files={src}", f"--data_dir={out}", *ARXIV_ARGS])
    assert repr(missing) in msg and "text" in msg and "label" in msg
    assert not out.exists() and not leftovers(tmp_path)


def test_data_files_without_all_splits(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "train.jsonl").write_text('{"text": "x", "label": 1}\n')
    msg = one_line_error([f"--data_files={src}", f"--data_dir={tmp_path / 'out'}"])
    assert "validation" in msg and "test" in msg


def test_existing_dataset_needs_force(tmp_path):
    out = make_synthetic(tmp_path / "synthetic")
    before = dataset_files(out)
    msg = one_line_error(TINY_SYNTHETIC + [f"--data_dir={out}", "--seed=8"])
    assert "--force" in msg and "already" in msg
    assert dataset_files(out) == before                         # untouched
    make_synthetic(out, "--seed=8", "--force")
    after = dataset_files(out)
    assert after.keys() == before.keys()
    assert after["chain0/train.bin"] != before["chain0/train.bin"]
    assert json.load(open(os.path.join(out, "meta.json")))["seed"] == 8
    check_layout(out)
    assert not leftovers(tmp_path)
    assert after == dataset_files(make_synthetic(tmp_path / "fresh" / "synthetic", "--seed=8"))


def test_refuses_to_replace_a_folder_that_is_not_a_dataset(tmp_path):
    """--data_dir=data (meaning data/synthetic) must not wipe the datasets and files inside it."""
    data = tmp_path / "data"
    inner = make_synthetic(data / "synthetic")
    (data / "notes.txt").write_text("mine")
    before = dataset_files(inner)
    for extra in ([], ["--force"]):
        msg = one_line_error(TINY_SYNTHETIC + [f"--data_dir={data}", *extra])
        assert "not a prepared dataset" in msg and "--data_dir" in msg
    assert (data / "notes.txt").read_text() == "mine" and dataset_files(inner) == before
    assert not leftovers(tmp_path) and not leftovers(data)
    empty = tmp_path / "empty"
    empty.mkdir()
    check_layout(make_synthetic(empty))                       # an empty folder is fine


def test_config_errors_name_the_key(tmp_path):
    msg = one_line_error(TINY_SYNTHETIC + [f"--data_dir={tmp_path / 'x'}", "--n_chains=3"])
    assert "n_chains" in msg and "n_components" in msg            # lists the valid keys
    msg = one_line_error(TINY_SYNTHETIC + [f"--data_dir={tmp_path / 'x'}", "--synth_vocab=many"])
    assert "synth_vocab" in msg and "int" in msg
    msg = one_line_error([f"--data_dir={tmp_path / 'x'}", "--source=wikipedia"])
    assert "wikipedia" in msg and "synthetic" in msg
    assert not (tmp_path / "x").exists()


def test_cli_prints_one_line_and_exits_2(tmp_path):
    out = make_synthetic(tmp_path / "synthetic")
    for extra in (["--seed=abc"], []):       # a wrong type; an existing dataset without --force
        r = subprocess.run([sys.executable, "prepare.py", *TINY_SYNTHETIC, f"--data_dir={out}",
                            *extra], cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert r.returncode == 2, r.stderr
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
        assert "Traceback" not in r.stderr
    assert "seed" in subprocess.run([sys.executable, "prepare.py", "--seed=abc"], cwd=ROOT,
                                    capture_output=True, text=True, timeout=60).stderr


def test_interrupted_synthetic_prepare_leaves_nothing(tmp_path, monkeypatch):
    real, calls = prepare.sample_docs, []

    def flaky(*args, **kwargs):
        calls.append(1)
        if len(calls) == 4:                     # after three splits were written
            raise KeyboardInterrupt
        return real(*args, **kwargs)
    monkeypatch.setattr(prepare, "sample_docs", flaky)
    out = tmp_path / "synthetic"
    with pytest.raises(KeyboardInterrupt):
        make_synthetic(out)
    assert len(calls) == 4
    assert not out.exists() and os.listdir(tmp_path) == []


def test_interrupted_rebuild_keeps_the_old_dataset(tmp_path, monkeypatch, tiktoken_cache):
    """--force that dies half-way: the previous complete dataset is still there, intact."""
    src = write_arxiv_files(tmp_path / "src", "parquet")
    out = str(tmp_path / "data" / "arxiv")
    prepare.main([f"--data_files={src}", f"--data_dir={out}", *ARXIV_ARGS])
    before = dataset_files(out)
    real, closes = prepare.SplitWriter.close, []

    def flaky(self):
        closes.append(1)
        if len(closes) == 5:
            raise KeyboardInterrupt
        return real(self)
    monkeypatch.setattr(prepare.SplitWriter, "close", flaky)
    with pytest.raises(KeyboardInterrupt):
        prepare.main([f"--data_files={src}", f"--data_dir={out}", "--force", *ARXIV_ARGS])
    assert len(closes) == 5
    assert dataset_files(out) == before
    assert os.listdir(tmp_path / "data") == ["arxiv"]
    data.Dataset(out)
    # and a first build that dies leaves no folder at all
    new = tmp_path / "data" / "other"
    closes.clear()
    with pytest.raises(KeyboardInterrupt):
        prepare.main([f"--data_files={src}", f"--data_dir={new}", *ARXIV_ARGS])
    assert not new.exists() and os.listdir(tmp_path / "data") == ["arxiv"]


# ----------------------------------------------------------------------------------------------
# 9: the shared reader

def test_dataset_reader_opens_a_good_folder(tiny_synthetic):
    ds = data.Dataset(tiny_synthetic)
    assert ds.components == ["chain0", "chain1", "chain2"] and ds.eot == 8 and ds.vocab_size == 9
    assert ds.source == "synthetic" and ds.name == "synthetic"
    for comp in ds.components:
        for split in SPLITS:
            t, o = ds.tokens(comp, split), ds.offsets(comp, split)
            assert isinstance(t, np.memmap) and t.dtype == np.uint16
            assert o.dtype == np.int64
            assert len(t) == ds.n_tokens(comp, split) == o[-1]
            raw = np.fromfile(os.path.join(tiny_synthetic, comp, f"{split}.bin"), np.uint16)
            assert np.array_equal(t, raw)


def test_dataset_reader_missing_folder(tmp_path):
    with pytest.raises(UserError) as e:
        data.Dataset(str(tmp_path / "data" / "synthetic"))
    msg = str(e.value)
    assert "\n" not in msg and "python prepare.py --source=synthetic" in msg


@pytest.mark.parametrize("target", ["chain1/train.bin", "chain2/test.idx"])
def test_dataset_reader_truncated_file(tiny_synthetic, tmp_path, target):
    copy = tmp_path / "synthetic"
    shutil.copytree(tiny_synthetic, copy)
    path = copy / target
    content = path.read_bytes()
    path.write_bytes(content[:-10])
    with pytest.raises(UserError) as e:
        data.Dataset(str(copy))
    msg = str(e.value)
    assert "\n" not in msg and target.split("/")[1] in msg
    assert "incomplete" in msg or "corrupt" in msg
    assert "python prepare.py --source=synthetic" in msg and "--force" in msg
    os.remove(path)
    with pytest.raises(UserError, match="missing"):
        data.Dataset(str(copy))


def test_dataset_reader_unknown_component(tiny_synthetic):
    ds = data.Dataset(tiny_synthetic)
    for call in (ds.tokens, ds.offsets):
        with pytest.raises(UserError) as e:
            call("cs.PL", "train")
        msg = str(e.value)
        assert "cs.PL" in msg and all(c in msg for c in ds.components)


@pytest.mark.parametrize("n", [1, 7, 20, 40, 10_000])
def test_fixed_windows(tiny_synthetic, n):
    ds = data.Dataset(tiny_synthetic)
    comp, split = "chain1", "test"
    tokens, offsets = np.asarray(ds.tokens(comp, split)), ds.offsets(comp, split)
    lengths = np.diff(offsets) - 1
    slots = lengths // WINDOW
    starts, docs = data.fixed_windows(ds, comp, split, n, seed=5)
    assert len(starts) == len(docs) == min(n, slots.sum())
    # each window inside its own document, before the EOT, no EOT inside
    doc_of = np.searchsorted(offsets, starts, side="right") - 1
    assert np.array_equal(doc_of, docs)
    assert np.all(starts >= offsets[docs]) and np.all(starts + WINDOW <= offsets[docs + 1] - 1)
    windows = tokens[starts[:, None] + np.arange(WINDOW)]
    assert not np.any(windows == ds.eot)
    # non-overlapping within a document; sorted by (doc, start)
    order = np.lexsort((starts, docs))
    assert np.array_equal(order, np.arange(len(starts)))
    same = docs[1:] == docs[:-1]
    assert np.all(np.diff(starts)[same] >= WINDOW)
    # spread over as many documents as possible
    assert len(np.unique(docs)) == min(n, int((slots > 0).sum()))
    per_doc = np.bincount(docs, minlength=len(slots))
    assert np.all(per_doc <= slots)
    if n >= (slots > 0).sum():
        assert per_doc[slots > 0].min() >= min(slots[slots > 0].min(), n // (slots > 0).sum())
    # deterministic in the seed
    again = data.fixed_windows(ds, comp, split, n, seed=5)
    assert np.array_equal(again[0], starts) and np.array_equal(again[1], docs)
    if n < slots.sum():
        other = data.fixed_windows(ds, comp, split, n, seed=6)
        assert not np.array_equal(other[0], starts)


def test_doc_windows_cover_each_token_once(tiny_synthetic):
    ds = data.Dataset(tiny_synthetic)
    tokens, offsets = np.asarray(ds.tokens("chain0", "val")), ds.offsets("chain0", "val")
    padded = np.concatenate([tokens, np.full(WINDOW, ds.eot, dtype=tokens.dtype)])
    for d in (0, 1, len(offsets) - 2):
        s, e = int(offsets[d]), int(offsets[d + 1]) - 1        # the document without its EOT
        for lo, hi in ((s, e), (s, s + 1), (s, s + 57), (s, s + BLOCK), (s, s + BLOCK + 1)):
            for head in range(1, BLOCK + 1):
                starts, n_targets = mixture.doc_windows(lo, hi, head)
                assert n_targets[0] == min(head, hi - lo)
                assert np.all((n_targets >= 1) & (n_targets <= BLOCK))
                assert starts[0] == lo - 1
                targets = np.concatenate([st + 1 + np.arange(k) for st, k in zip(starts, n_targets)])
                assert np.array_equal(targets, np.arange(lo, hi))   # each token once, in order
                if head == 37 and lo > 0:
                    x, y = data.gather_windows(padded, starts, n_targets)
                    assert x[0, 0] == ds.eot                       # context starts at the EOT
                    assert np.array_equal(y[y >= 0], tokens[lo:hi])


# ----------------------------------------------------------------------------- integrity (issue 8)

def write_rows(folder, rows_by_split, label_type="int64"):
    """Parquet files with a plain label column (no ClassLabel), so any label value can be written."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    os.makedirs(folder, exist_ok=True)
    for hf_split, rows in rows_by_split.items():
        pq.write_table(pa.table({"text": pa.array([r[0] for r in rows], pa.string()),
                                 "label": pa.array([r[1] for r in rows], label_type)}),
                       os.path.join(folder, f"{hf_split}.parquet"))
    return str(folder)


@pytest.mark.parametrize("bad_label, label_type", [(-1, "int64"), (11, "int64"), (float("nan"), "float64"),
                                                   (None, "int64")])
def test_documents_without_a_valid_label_or_text_are_left_out_and_counted(tmp_path, tiktoken_cache, capsys,
                                                                         bad_label, label_type):
    st, gr = prepare.ARXIV_LABELS.index("math.ST"), prepare.ARXIV_LABELS.index("math.GR")
    rows = {split: [(f"{split} statistics.", st), (f"{split} groups.", gr), ("no label here.", bad_label),
                    (None, st)] for split in ("train", "validation", "test")}
    src = write_rows(tmp_path / "src", rows, label_type)
    out = str(tmp_path / "arxiv")
    prepare.main([f"--data_files={src}", f"--data_dir={out}", *ARXIV_ARGS])
    printed = capsys.readouterr().out
    for split in ("train", "val", "test"):
        assert f"note: {split}: left out 1 document(s) with no valid label, 1 document(s) with no text" in printed
    meta = json.load(open(os.path.join(out, "meta.json")))
    assert sorted(meta["components"]) == ["math.GR", "math.ST"]       # never filed under names[-1]
    for comp in meta["components"]:
        for split in ("train", "val", "test"):
            assert meta["splits"][comp][split]["docs"] == 1
    assert decoded_docs(out, "math.ST", "train") == ["train statistics."]


def test_empty_or_unreadable_input_files_are_one_line(tmp_path, tiktoken_cache):
    src = write_arxiv_files(tmp_path / "src", "parquet")
    open(os.path.join(src, "test.parquet"), "wb").close()                 # 0 bytes
    msg = one_line_error([f"--data_files={src}", f"--data_dir={tmp_path}/a", *ARXIV_ARGS])
    assert "test.parquet is empty" in msg
    with open(os.path.join(src, "test.parquet"), "wb") as f:            # not parquet at all
        f.write(b"PAR1 this is not a parquet file")
    msg = one_line_error([f"--data_files={src}", f"--data_dir={tmp_path}/b", *ARXIV_ARGS])
    assert "could not read" in msg and "complete parquet" in msg
    js = write_arxiv_files(tmp_path / "js", "jsonl")
    with open(os.path.join(js, "train.jsonl"), "ab") as f:              # invalid UTF-8
        f.write(b'{"text": "\xff\xfe broken", "label": 3}\n')
    msg = one_line_error([f"--data_files={js}", f"--data_dir={tmp_path}/c", *ARXIV_ARGS])
    assert "not valid UTF-8" in msg
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".tmp-")]  # nothing half-written


def test_identical_rebuild_keeps_the_fingerprint_and_another_changes_it(tmp_path):
    path = make_synthetic(tmp_path / "synthetic")
    first = data.Dataset(path).fingerprint
    make_synthetic(tmp_path / "synthetic", "--force")                   # same seed: same content
    assert data.Dataset(path).fingerprint == first
    assert json.load(open(os.path.join(path, "meta.json")))["fingerprint"] == first
    make_synthetic(tmp_path / "synthetic", "--force", "--seed=8")
    assert data.Dataset(path).fingerprint != first


def test_damaged_meta_json_is_named_and_rebuilt_with_force(tmp_path):
    path = make_synthetic(tmp_path / "synthetic")
    with open(os.path.join(path, "meta.json"), "w") as f:
        f.write('{"dataset": "synth')                                  # cut short
    with pytest.raises(UserError, match="meta.json is unreadable"):
        data.Dataset(path)
    msg = one_line_error(TINY_SYNTHETIC + [f"--data_dir={path}"])
    assert "damaged dataset" in msg and "--force" in msg
    make_synthetic(tmp_path / "synthetic", "--force")
    data.Dataset(path)


def test_a_dead_prepares_temp_folder_is_removed_and_a_live_ones_kept(tmp_path):
    import fcntl
    parent = tmp_path / "data"
    dead, live = parent / ".tmp-synthetic-dead", parent / ".tmp-synthetic-live"
    for folder in (dead, live):
        os.makedirs(folder)
        (folder / "junk.bin").write_bytes(b"0" * 1000)
        (folder / ".building").write_text("")
    holder = open(live / ".building", "a")                             # a prepare still writing
    fcntl.flock(holder, fcntl.LOCK_EX)
    make_synthetic(parent / "synthetic")
    assert not dead.exists() and live.exists()
    holder.close()
    assert [p for p in os.listdir(parent) if p.startswith(".tmp-")] == [".tmp-synthetic-live"]
