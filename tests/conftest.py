"""Fixtures: an isolated $SPECTUNE_HOME per test, and tiny models built from config."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # `import tiny` from any test

import tiny  # noqa: E402


@pytest.fixture(autouse=True)
def spectune_home(tmp_path_factory, monkeypatch, request):
    """Unit tests never touch the user's cache; integration tests share one per session."""
    if request.node.get_closest_marker("integration"):
        home = tmp_path_factory.getbasetemp() / "integration-home"
    else:
        home = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("SPECTUNE_HOME", str(home))
    return home


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory) -> Path:
    return tiny.save_with_tokenizer(tiny.tiny_llama(), tmp_path_factory.mktemp("tiny-llama"), tiny.TINY_BPE)


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory) -> Path:
    return tiny.save_with_tokenizer(tiny.tiny_bert(), tmp_path_factory.mktemp("tiny-bert"), tiny.TINY_WORDPIECE)


@pytest.fixture(scope="session")
def tiny_gguf(tmp_path_factory) -> Path:
    return tiny.write_llama_gguf(tiny.tiny_llama(seed=1), tmp_path_factory.mktemp("gguf") / "tiny-llama.gguf")


@pytest.fixture(scope="module", params=["transformers", "lean"])
def target(request):
    """The decoding tests' target (test_decode.sharp_llama): every invariant holds with transformers'
    forward and with ours (lean_llama.py). A module with a `target` of its own overrides this one."""
    from test_decode import sharp_llama

    from spectune.decode import lean_llama

    model = sharp_llama()
    if request.param == "lean":
        assert lean_llama.install(model)
    return model
