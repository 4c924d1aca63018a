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
