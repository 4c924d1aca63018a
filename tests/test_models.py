"""Model resolution: every kind of spec, every kind of bad input, and the GGUF cache's promises."""

import json
import os
import shutil
import subprocess
import sys

import pytest
import tiny
import torch

import spectune.gguf_convert as gc
from spectune import load_model, load_tokenizer, resolve_model
from spectune.errors import SpectuneError


def test_folder_resolves_with_its_kind(tiny_llama_dir, tiny_bert_dir):
    ref = resolve_model(str(tiny_llama_dir))
    assert (ref.source, ref.kind, ref.path) == ("folder", "causal-lm", tiny_llama_dir.resolve())
    assert resolve_model(str(tiny_bert_dir)).kind == "encoder"
    assert load_model(ref).config.num_hidden_layers == 2
    assert load_tokenizer(ref).eos_token == "<|im_end|>"


@pytest.mark.parametrize("spec, expected", [
    ("", "empty model spec"),
    ("./no/such/folder", "no such file or folder: './no/such/folder'"),
    ("missing.gguf", "no such file or folder"),
    ("smollm2", "unknown model 'smollm2': did you mean 'smollm2-135m'?"),
    ("gpt-42", "unknown model 'gpt-42'"),
])
def test_bad_specs(spec, expected):
    with pytest.raises(SpectuneError, match=expected):
        resolve_model(spec)


def test_unreachable_hub_id_says_what_to_use(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    with pytest.raises(SpectuneError) as e:
        resolve_model("HuggingFaceTB/SmolLM2-360M-Instruct")
    msg = str(e.value)
    assert "cannot reach the Hugging Face hub" in msg and "smollm2-135m" in msg and "\n" not in msg


def test_folder_that_is_not_a_model(tmp_path, tiny_llama_dir):
    with pytest.raises(SpectuneError, match="not a model folder: no config.json"):
        resolve_model(str(tmp_path))
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(SpectuneError, match="config.json: invalid JSON"):
        resolve_model(str(tmp_path))
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(SpectuneError, match=r"no weights \(\*.safetensors\)"):
        resolve_model(str(tmp_path))
    (tmp_path / "pytorch_model.bin").write_bytes(b"\x80\x04 pickled")
    with pytest.raises(SpectuneError, match="only pickled weights .*never loads"):
        resolve_model(str(tmp_path))
    notgguf = tmp_path / "weights.txt"
    notgguf.write_text("x")
    with pytest.raises(SpectuneError, match="is a file but not a .gguf"):
        resolve_model(str(notgguf))


def test_damaged_safetensors_is_named(tmp_path, tiny_llama_dir):
    bad = tmp_path / "bad"
    shutil.copytree(tiny_llama_dir, bad)
    st = bad / "model.safetensors"
    st.write_bytes(st.read_bytes()[: st.stat().st_size // 2])
    with pytest.raises(SpectuneError, match=f"{bad}: cannot load the model"):
        load_model(str(bad))


def test_encoder_refused_for_generation(tiny_bert_dir):
    with pytest.raises(SpectuneError, match="is an encoder model, but this needs a causal LM"):
        load_model(str(tiny_bert_dir))


def test_gguf_converts_once_to_an_exact_plain_folder(tiny_gguf, spectune_home):
    ref = resolve_model(str(tiny_gguf), progress=False)
    assert ref.source == "gguf" and ref.path.parent == spectune_home / "models"
    assert sorted(p.name for p in ref.path.glob("*.safetensors")) == ["model.safetensors"]
    # The folder loads with plain transformers, and gives the GGUF load's logits exactly.
    from transformers import AutoModelForCausalLM

    plain = AutoModelForCausalLM.from_pretrained(ref.path)
    direct = AutoModelForCausalLM.from_pretrained(tiny_gguf.parent, gguf_file=tiny_gguf.name)
    source = tiny.tiny_llama(seed=1)  # the weights the GGUF was written from
    x = torch.randint(0, 384, (2, 17), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a, b, c = plain(x).logits, direct(x).logits, source(x).logits
    assert torch.equal(a, b) and torch.equal(a, c)
    # Second resolve: a cache hit, no conversion.
    mtime = (ref.path / "model.safetensors").stat().st_mtime_ns
    assert resolve_model(str(tiny_gguf)).path == ref.path
    assert (ref.path / "model.safetensors").stat().st_mtime_ns == mtime
    record = json.loads((ref.path / gc.SOURCE_FILE).read_text())
    assert record["dtype"] == "fp32" and record["params"] == sum(p.numel() for p in source.parameters())


def test_bf16_storage_is_a_separate_entry(tiny_gguf):
    fp32 = resolve_model(str(tiny_gguf), dtype="fp32", progress=False)
    bf16 = resolve_model(str(tiny_gguf), dtype="bf16", progress=False)
    assert bf16.path != fp32.path and bf16.path.name.endswith("-bf16")
    from safetensors import safe_open

    with safe_open(str(bf16.path / "model.safetensors"), "pt") as f:
        assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"BF16"}
    assert resolve_model(str(tiny_gguf)).path == fp32.path  # no dtype asked: the exact one wins


@pytest.mark.parametrize("damage, expected", [
    (lambda b: b"GGML" + b[4:], "not a GGUF file"),
    (lambda b: b[: len(b) // 2], "corrupt or truncated GGUF"),
    (lambda b: b[:40], "corrupt or truncated GGUF"),
])
def test_damaged_gguf(tmp_path, tiny_gguf, damage, expected):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(damage(tiny_gguf.read_bytes()))
    with pytest.raises(SpectuneError, match=expected) as e:
        resolve_model(str(bad))
    assert str(e.value).startswith(str(bad))


def test_crash_mid_conversion_leaves_nothing_that_loads(tiny_gguf, spectune_home, monkeypatch):
    from transformers import PreTrainedModel

    real_save = PreTrainedModel.save_pretrained

    def save_then_die(self, folder, **kw):
        real_save(self, folder, **kw)  # weights half-way in place, then the process "dies"
        raise KeyboardInterrupt

    monkeypatch.setattr(PreTrainedModel, "save_pretrained", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        resolve_model(str(tiny_gguf), progress=False)
    monkeypatch.undo()
    monkeypatch.setenv("SPECTUNE_HOME", str(spectune_home))
    assert list((spectune_home / "models").iterdir()) == []
    assert resolve_model(str(tiny_gguf), progress=False).path.is_dir()


def test_leftovers_of_a_killed_process_are_swept(tiny_gguf, spectune_home):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    stale = spectune_home / "models" / f".tmp-tiny-llama-abc-fp32-{dead}"
    mine = spectune_home / "models" / f".tmp-other-fp32-{os.getpid()}"  # alive: not touched
    for d in (stale, mine):
        d.mkdir(parents=True)
        (d / "model.safetensors").write_bytes(b"partial")
    ref = resolve_model(str(tiny_gguf), progress=False)
    assert not stale.exists() and mine.exists()
    assert [p.name for p in (spectune_home / "models").iterdir() if not p.name.startswith(".")] == [ref.path.name]


def test_hash_is_remembered(tiny_gguf, monkeypatch):
    first = gc.file_sha256(tiny_gguf)
    monkeypatch.setattr(gc.hashlib, "sha256", lambda: pytest.fail("hashed twice"))
    assert gc.file_sha256(tiny_gguf) == first
