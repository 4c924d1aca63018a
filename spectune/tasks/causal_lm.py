"""Causal-LM generation: instructions and chats (loss on assistant turns only) and raw text.

Chats are rendered with the model's chat template turn by turn, so each token knows whether it
belongs to an assistant answer; prompts, system and user turns are context, not targets. Raw
text documents are joined with EOS and cut into full blocks (packing), every token a target.
"""

from __future__ import annotations

import math

import torch

from ..data.chat import LMExample, read_lm
from ..errors import SpectuneError
from . import logits_of, pad

IGNORE = -100


class CausalLM:
    name = "lm"
    metric = "loss"  # lower is better; perplexity = exp(loss)
    metrics = ("loss", "perplexity")

    def __init__(self, tokenizer, labels=None, max_length=256, **_):
        self.tok, self.max_length, self.labels = tokenizer, max_length, None
        self.truncated = 0

    def read(self, path, split="train") -> list[LMExample]:
        return read_lm(path)

    def model_class(self):
        from transformers import AutoModelForCausalLM

        return AutoModelForCausalLM

    def encode(self, examples: list[LMExample]) -> list[dict]:
        texts = [e for e in examples if e.text is not None]
        chats = [e for e in examples if e.text is None]
        feats = [self._encode_chat(e) for e in chats]
        self.truncated = sum(f.pop("cut") for f in feats)
        return feats + self._pack([e.text for e in texts])

    def _encode_chat(self, ex: LMExample) -> dict:
        ids, labels = [], []
        for text, trained in self._segments(ex):
            piece = self.tok(text, add_special_tokens=False).input_ids
            ids += piece
            labels += piece if trained else [IGNORE] * len(piece)
        cut = len(ids) > self.max_length
        return {"input_ids": ids[: self.max_length], "labels": labels[: self.max_length], "cut": cut}

    def _segments(self, ex: LMExample):
        """(text, trained) pieces whose concatenation is the whole rendered chat."""
        msgs = ex.messages
        if not getattr(self.tok, "chat_template", None):
            # No template (a base model): plain "prompt response<eos>", loss on the answers.
            for m in msgs:
                sep = "" if m is msgs[0] else "\n"
                yield sep + m["content"] + (self.tok.eos_token or "" if m["role"] == "assistant" else ""), \
                    m["role"] == "assistant"
            return
        render = self._render
        done = ""
        for k, m in enumerate(msgs):
            if m["role"] == "assistant":
                with_prompt = render(msgs[:k], generation_prompt=True)
                yield self._after(with_prompt, done, ex), False
                full = render(msgs[: k + 1])
                yield self._after(full, with_prompt, ex), True
                done = full
            else:
                full = render(msgs[: k + 1])
                yield self._after(full, done, ex), False
                done = full

    def _render(self, msgs, generation_prompt=False) -> str:
        if not msgs:
            return ""
        return self.tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=generation_prompt)

    @staticmethod
    def _after(text: str, prefix: str, ex: LMExample) -> str:
        if not text.startswith(prefix):
            # A template that rewrites earlier turns (some drop old reasoning) cannot be split by turn.
            raise SpectuneError("the model's chat template renders earlier turns differently as the chat grows; "
                                "train this model on prompt/response pairs instead", where=ex.where)
        return text[len(prefix):]

    def _pack(self, docs: list[str]) -> list[dict]:
        if not docs:
            return []
        eos = [self.tok.eos_token_id] if self.tok.eos_token_id is not None else []
        stream: list[int] = []
        for d in docs:
            stream += self.tok(d, add_special_tokens=False).input_ids + eos
        n = self.max_length
        blocks = [stream[i:i + n] for i in range(0, len(stream), n)]
        return [{"input_ids": b, "labels": list(b)} for b in blocks if len(b) > 1]

    def collate(self, feats: list[dict]) -> dict:
        return {"input_ids": pad([f["input_ids"] for f in feats], self.tok.pad_token_id or 0),
                "attention_mask": pad([[1] * len(f["input_ids"]) for f in feats], 0),
                "labels": pad([f["labels"] for f in feats], IGNORE)}

    def loss(self, model, batch, reduction: str = "mean") -> torch.Tensor:
        logits = logits_of(model, batch)  # (B, T, V)
        # Position t predicts token t+1. Shift the labels, not the logits: a sliced (B, T-1, V) view
        # would be copied by flatten, another 200 MB at batch 4 x 256 with a 49k vocabulary.
        targets = torch.nn.functional.pad(batch["labels"][:, 1:], (0, 1), value=IGNORE)  # (B, T)
        return torch.nn.functional.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(),
                                                 ignore_index=IGNORE, reduction=reduction)

    @torch.no_grad()
    def evaluate(self, model, feats, examples, batch_size=16) -> dict:
        """Loss per target token over the whole set (not a mean of batch means), and perplexity."""
        total, tokens = 0.0, 0
        for i in range(0, len(feats), batch_size):
            batch = self.collate(feats[i:i + batch_size])
            total += float(self.loss(model, batch, reduction="sum"))
            tokens += int((batch["labels"][:, 1:] != IGNORE).sum())
        loss = total / max(tokens, 1)
        return {"task": "lm", "loss": loss, "perplexity": math.exp(min(loss, 50.0)), "tokens": tokens}
