"""Shared fixtures: tiny datasets the tests make themselves (no network, seconds on CPU)."""
import os
import sys
import tempfile

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
SHARED = os.path.join(os.path.dirname(ROOT), "shared")
TIKTOKEN_CACHE = os.path.join(SHARED, "tiktoken")
REALTEXT = os.path.join(SHARED, "realtext")

# keep the Arrow copies that `datasets` makes of local files out of the user's ~/.cache
os.environ["HF_DATASETS_CACHE"] = tempfile.mkdtemp(prefix="hf-datasets-test-")

import prepare  # noqa: E402

# a few small chains with short documents: enough for every property, fast to write
TINY_SYNTHETIC = ["--source=synthetic", "--n_components=3", "--synth_vocab=8",
                  "--doc_tokens=(150,400)", "--split_tokens=(6000,1500,3000)", "--seed=7"]


def make_synthetic(path, *extra):
    prepare.main(TINY_SYNTHETIC + [f"--data_dir={path}", *extra])
    return str(path)


@pytest.fixture(scope="session")
def tiny_synthetic(tmp_path_factory):
    """A read-only tiny synthetic dataset shared by the tests (3 chains over 8 states)."""
    return make_synthetic(tmp_path_factory.mktemp("data") / "synthetic")


@pytest.fixture
def tiktoken_cache(monkeypatch):
    """r50k_base (the same ranks as gpt2) from the shared offline cache, or skip."""
    if not os.path.isdir(TIKTOKEN_CACHE) or not os.listdir(TIKTOKEN_CACHE):
        pytest.skip("no offline tiktoken cache in ../shared/tiktoken")
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", TIKTOKEN_CACHE)
    return TIKTOKEN_CACHE


@pytest.fixture
def realtext():
    if not os.path.exists(os.path.join(REALTEXT, "train.parquet")):
        pytest.skip("no ../shared/realtext sample")
    return REALTEXT


def make_real_vocab(path, n_components=2, split_tokens=(1_000_000, 60_000, 60_000), seed=0):
    """
    A dataset with GPT-2's vocabulary (50257 tokens, EOT 50256) and no tokenizer: each component
    is a sparse random chain in which every token has four successors, drawn Zipf-like from a
    component-specific ranking of the vocabulary. The real-size model path (50257-way logits,
    uint16 ids near the top of the range) without the network or a tokenizer; the loss falls from
    ln 50257 = 10.8 nats as the model learns the frequent tokens, then the successors.
    """
    import numpy as np
    vocab, eot = 50257, 50256
    rng = np.random.default_rng(seed)
    zipf = 1.0 / (np.arange(eot) + 10.0)
    zipf /= zipf.sum()

    def build(work):
        names = [f"gen{i}" for i in range(n_components)]
        splits = {}
        for name in names:
            ranking = rng.permutation(eot)
            successors = ranking[rng.choice(eot, size=(eot, 4), p=zipf)]
            splits[name] = {}
            for split, target in zip(("train", "val", "test"), split_tokens):
                writer = prepare.SplitWriter(os.path.join(work, name), split)
                lengths = rng.integers(500, 2000, size=target // 1000 + 1)
                docs = np.empty((len(lengths), lengths.max()), dtype=np.int64)
                docs[:, 0] = ranking[rng.choice(eot, size=len(lengths), p=zipf)]
                for t in range(1, docs.shape[1]):
                    pick = rng.choice(4, size=len(lengths), p=[0.55, 0.25, 0.15, 0.05])
                    docs[:, t] = successors[docs[:, t - 1], pick]
                for doc, n in zip(docs, lengths):
                    writer.add(np.append(doc[:n], eot))
                splits[name][split] = writer.close()
        return {"tokenizer": "generated", "vocab_size": vocab, "eot": eot, "components": names,
                "splits": splits, "origin": {"generated": "tests/conftest.py make_real_vocab"}}

    prepare.build_dataset(str(path), build, "generated", seed)
    return str(path)
