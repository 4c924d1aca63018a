"""The real embedded models: SmolLM2-135M (GGUF, converted) and MiniLM-L6 (safetensors)."""

import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from spectune import Generator, list_models, load_model, load_tokenizer, resolve_model
from spectune.models import ALIASES, alias_source

pytestmark = pytest.mark.integration


def test_converted_smollm2_loads_with_plain_transformers_and_matches_the_gguf():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    ref = resolve_model("smollm2-135m", progress=False)
    gguf = alias_source(ALIASES["smollm2-135m"])
    plain = AutoModelForCausalLM.from_pretrained(ref.path)  # no spectune involved
    direct = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    tok = AutoTokenizer.from_pretrained(ref.path)
    ids = tok("The capital of France is Paris, and the capital of Italy is", return_tensors="pt").input_ids
    with torch.no_grad():
        assert torch.equal(plain(ids).logits, direct(ids).logits)
    assert sum(p.numel() for p in plain.parameters()) == 134_515_008
    assert tok.chat_template and tok.eos_token == "<|im_end|>"


def test_smollm2_answers_sensibly():
    gen = Generator("smollm2-135m")
    assert "Paris" in gen.generate("What is the capital of France?", max_new_tokens=24).text
    assert "Paris" in gen.generate("The capital of France is", raw=True, max_new_tokens=8).text


def test_minilm_is_an_encoder_that_embeds():
    ref = resolve_model("minilm-l6")
    assert ref.kind == "encoder" and ref.source == "alias"
    tok, model = load_tokenizer(ref), load_model(ref, kind="encoder")
    batch = tok(["a cat sits on the mat", "a kitten rests on a rug", "stock prices fell sharply"],
                padding=True, return_tensors="pt")
    with torch.no_grad():
        h = model(**batch).last_hidden_state  # (3, T, 384)
    mask = batch.attention_mask.unsqueeze(-1)
    emb = torch.nn.functional.normalize((h * mask).sum(1) / mask.sum(1), dim=-1)
    sim = emb @ emb.T
    assert sim[0, 1] > sim[0, 2] + 0.2  # real pretrained weights: paraphrases sit close


def test_models_list_shows_both():
    rows = {r["name"]: r for r in list_models()}
    assert rows["smollm2-135m"]["kind"] == "causal-lm" and rows["minilm-l6"]["kind"] == "encoder"
    assert round(rows["minilm-l6"]["params"] / 1e6, 1) == 22.7


def test_killed_prepare_leaves_no_entry_and_prepare_again_works(tmp_path):
    env = {**os.environ, "SPECTUNE_HOME": str(tmp_path)}
    cmd = [sys.executable, "-m", "spectune.cli", "models", "prepare", "smollm2-135m"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    models = tmp_path / "models"
    deadline = time.time() + 120
    while not any(models.glob(".tmp-*")) and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(3.0)  # well inside the dequantization (about 15 s in all)
    assert proc.poll() is None, "conversion finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert [p.name for p in models.iterdir() if not p.name.startswith(".")] == []
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    finished = [p for p in models.iterdir() if not p.name.startswith(".")]
    assert len(finished) == 1 and not any(models.glob(".tmp-*"))
    from transformers import AutoModelForCausalLM

    assert AutoModelForCausalLM.from_pretrained(finished[0]).config.num_hidden_layers == 30


def test_speculative_greedy_on_smollm2_equals_transformers():
    from spectune.decode.drafters import make_drafter
    from spectune.decode.engine import Metrics, decode
    from spectune.generate import prompt_ids

    tok, model = load_tokenizer("smollm2-135m"), load_model("smollm2-135m")
    ids = prompt_ids(tok, "Repeat exactly: the quick brown fox jumps over the lazy dog, and the dog sleeps on.")
    ref = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=24, do_sample=False,
                         pad_token_id=tok.pad_token_id)[0, ids.shape[1]:].tolist()
    for draft in ("lookup", "layers:8"):
        m = Metrics()
        out = [t for c in decode(model, ids[0].tolist(), max_new_tokens=24, eos={tok.eos_token_id},
                                 drafter=make_drafter(draft, model), metrics=m) for t in c]
        assert out == ref[: len(out)] and (len(out) == 24 or out[-1] == tok.eos_token_id), draft
    assert m.drafted > 0
