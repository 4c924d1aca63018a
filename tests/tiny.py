"""Tiny models built from config (2 layers, hidden 32) and a GGUF writer, so unit tests never need
the real weights. Shared by conftest fixtures and by tests that run a CLI in a subprocess."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

ASSETS = Path(__file__).parent / "assets"
TINY_BPE = ASSETS / "tiny-bpe"
TINY_WORDPIECE = ASSETS / "tiny-wordpiece"


def tiny_llama(seed: int = 0, sharpen: float = 20.0, **overrides):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = dict(vocab_size=384, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
               num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
               tie_word_embeddings=True, bos_token_id=1, eos_token_id=2, pad_token_id=0,
               rope_theta=10000.0, rms_norm_eps=1e-5)
    cfg.update(overrides)
    model = LlamaForCausalLM(LlamaConfig(**cfg)).eval()
    # Random init gives near-uniform logits (argmax ties); widen them so greedy paths are stable.
    with torch.no_grad():
        model.model.embed_tokens.weight.mul_(sharpen)
    return model


def tiny_bert(seed: int = 0):
    from transformers import BertConfig, BertModel

    torch.manual_seed(seed)
    return BertModel(BertConfig(vocab_size=256, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                intermediate_size=64, max_position_embeddings=128)).eval()


def save_with_tokenizer(model, folder: Path, tokenizer_dir: Path) -> Path:
    from transformers import AutoTokenizer

    model.save_pretrained(folder, safe_serialization=True)
    AutoTokenizer.from_pretrained(tokenizer_dir).save_pretrained(folder)
    return folder


def _permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's reordering of q/k rows for its rope layout (transformers undoes it on load)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_llama_gguf(model, path: Path, tokenizer_dir: Path = TINY_BPE) -> Path:
    """Write a HF llama model and a byte-level BPE tokenizer as an F32 GGUF, as llama.cpp would."""
    import gguf

    c = model.config
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name("tiny-llama")
    w.add_context_length(c.max_position_embeddings)
    w.add_embedding_length(c.hidden_size)
    w.add_block_count(c.num_hidden_layers)
    w.add_feed_forward_length(c.intermediate_size)
    w.add_head_count(c.num_attention_heads)
    w.add_head_count_kv(c.num_key_value_heads)
    w.add_rope_dimension_count(c.hidden_size // c.num_attention_heads)
    w.add_rope_freq_base(c.rope_parameters["rope_theta"])
    w.add_layer_norm_rms_eps(c.rms_norm_eps)
    w.add_vocab_size(c.vocab_size)

    tj = json.loads((tokenizer_dir / "tokenizer.json").read_text())
    tc = json.loads((tokenizer_dir / "tokenizer_config.json").read_text())
    vocab = sorted(tj["model"]["vocab"].items(), key=lambda kv: kv[1])
    specials = {t["content"] for t in tj["added_tokens"]}
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list([t for t, _ in vocab])
    w.add_token_types([3 if t in specials else 1 for t, _ in vocab])
    w.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in tj["model"]["merges"]])
    w.add_bos_token_id(c.bos_token_id)
    w.add_eos_token_id(c.eos_token_id)
    w.add_pad_token_id(c.pad_token_id)
    w.add_add_bos_token(False)
    template = tokenizer_dir / "chat_template.jinja"
    w.add_chat_template(template.read_text() if template.exists() else tc.get("chat_template", ""))

    sd = {k: v.detach().float().numpy() for k, v in model.state_dict().items()}
    w.add_tensor("token_embd.weight", sd["model.embed_tokens.weight"])
    names = {"input_layernorm": "attn_norm", "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
             "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output",
             "post_attention_layernorm": "ffn_norm", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
             "mlp.down_proj": "ffn_down"}
    for i in range(c.num_hidden_layers):
        for hf, gg in names.items():
            t = sd[f"model.layers.{i}.{hf}.weight"]
            if gg == "attn_q":
                t = _permute(t, c.num_attention_heads)
            elif gg == "attn_k":
                t = _permute(t, c.num_key_value_heads)
            w.add_tensor(f"blk.{i}.{gg}.weight", np.ascontiguousarray(t))
    w.add_tensor("output_norm.weight", sd["model.norm.weight"])
    if not c.tie_word_embeddings:
        w.add_tensor("output.weight", sd["lm_head.weight"])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


# ----------------------------------------------------------------------------------------------
# Tiny labelled data in the formats users bring (deterministic)

PEOPLE, PLACES = ["paris", "fox", "dog"], ["france", "capital"]
FILLER = ["the", "quick", "brown", "jumps", "over", "lazy", "model", "reads", "text"]


def write_ner(folder: Path, sizes=(("train", 96), ("dev", 24), ("test", 24)), seed: int = 0) -> dict[str, Path]:
    import random

    rng, paths = random.Random(seed), {}
    for name, n in sizes:
        lines = ["-DOCSTART- -X- -X- O", ""]
        for _ in range(n):
            for _ in range(rng.randint(3, 8)):
                r = rng.random()
                if r < 0.2:
                    lines += [f"{rng.choice(PEOPLE)} NN B-PER", f"{rng.choice(PEOPLE)} NN I-PER"]
                elif r < 0.35:
                    lines.append(f"{rng.choice(PLACES)} NN B-LOC")
                else:
                    lines.append(f"{rng.choice(FILLER)} NN O")
            lines.append("")
        paths[name] = folder / f"{name}.conll"
        paths[name].write_text("\n".join(lines) + "\n")
    return paths


def write_classify(folder: Path, sizes=(("train", 96), ("dev", 24), ("test", 24)), seed: int = 0) -> dict[str, Path]:
    import random

    rng, paths = random.Random(seed), {}
    cue = {"pos": ["good", "great", "help", "quick"], "neg": ["lazy", "bad", "reset", "password"]}
    for name, n in sizes:
        rows = ["text,label"]
        for _ in range(n):
            label = rng.choice(["pos", "neg"])
            words = rng.choices(cue[label], k=3) + rng.choices(FILLER, k=3)
            rng.shuffle(words)
            rows.append(f"{' '.join(words)},{label}")
        paths[name] = folder / f"{name}.csv"
        paths[name].write_text("\n".join(rows) + "\n")
    return paths


def write_chat(folder: Path) -> Path:
    rows = [{"prompt": "What is the capital of France?", "response": "The capital of France is Paris."},
            {"messages": [{"role": "user", "content": "Hello!"},
                          {"role": "assistant", "content": "How can I help you today?"}]}] * 8
    path = folder / "chat.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path
