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
