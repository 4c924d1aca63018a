"""Distilling a draft for a target: the task `spectune distill` trains with the ordinary loop.

The draft (`--kind small`) is the target's own architecture cut to its first N layers, initialised
from the target (embeddings, those layers, final norm, output layer), so it shares the tokenizer
and starts close. It learns what the target *says*, on-policy (DistillSpec): for each training
prompt the target writes its own greedy answer with our engine, and the target's next-token
distribution at every answer position becomes the soft label (its top-K probabilities,
renormalised, kept once at encoding so epochs cost no target passes). The loss is the
cross-entropy of the draft's distribution against those soft labels (KL up to a constant); the
dev metric is greedy agreement, the share of answer positions where the draft's top token is the
target's: the acceptance rate greedy speculative decoding will see.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import torch

from ..data import read_jsonl, read_lines, require_rows
from ..errors import SpectuneError
from . import logits_of, pad

TOP_K = 32  # soft-label width: the target's top tokens hold nearly all its mass on its own text


@dataclass
class Prompt:
    prompt: str | list[dict]  # raw text, or chat messages (the chat template applies)
    where: str


class DraftDistill:
    name = "draft"
    metric = "agreement"
    metrics = ("agreement", "loss")

    def __init__(self, tokenizer, labels=None, max_length=256, target=None, target_model=None, layers=2,
                 new_tokens=64, **_):
        self.tok, self.max_length, self.labels = tokenizer, max_length, None
        self.target_spec, self.layers, self.new_tokens = target, layers, new_tokens
        self._target = target_model
        self.truncated = 0

    @property
    def target(self):
        if self._target is None:
            from ..run import load_generation_model

            self._target = load_generation_model(self.target_spec)
        return self._target

    def read(self, path, split="train") -> list[Prompt]:
        """`.txt`: one raw prompt per line; `.jsonl`: {"prompt": text} or {"messages": [...]} (a final
        assistant turn is dropped: the target writes its own answer)."""
        from pathlib import Path

        if Path(path).suffix == ".txt":
            rows = [Prompt(line, f"{path}:{n}") for n, line in read_lines(path) if line.strip()]
            return require_rows(rows, path, "prompts")
        rows = []
        for where, row in read_jsonl(path):
            if isinstance(row.get("prompt"), str) and row["prompt"].strip():
                rows.append(Prompt(row["prompt"], where))
                continue
            msgs = row.get("messages")
            if not isinstance(msgs, list) or not all(isinstance(m, dict) and isinstance(m.get("content"), str)
                                                     for m in msgs):
                raise SpectuneError('expected {"prompt": text} or {"messages": [{"role", "content"}, ...]}',
                                    where=where)
            while self.new_tokens and msgs and msgs[-1].get("role") == "assistant":
                msgs = msgs[:-1]
            if msgs:
                rows.append(Prompt(msgs, where))
        seen, unique = set(), []
        for r in rows:  # chats that differ only in their (dropped) answers give one prompt
            key = repr(r.prompt)
            if key not in seen:
                seen.add(key)
                unique.append(r)
        return require_rows(unique, path, "prompts")

    def model_class(self):
        from transformers import AutoModelForCausalLM

        return AutoModelForCausalLM

    def build_model(self, dropout=None):
        """The draft: the target's architecture with its first `layers` layers, the target's weights
        copied in. Embeddings and the (tied) output layer stay frozen: they are the target's, the
        largest matrices by far, and what lets the draft's tokens mean what the target's mean."""
        import copy

        from ..run import set_dropout

        config = copy.deepcopy(self.target.config)
        n = getattr(config, "num_hidden_layers", None)
        if n is None or not 1 <= self.layers < n:
            raise SpectuneError(f"got {self.layers}, expected 1 to {(n or 2) - 1} (the target has {n} layers)",
                                where="draft_layers")
        config.num_hidden_layers = self.layers
        if getattr(config, "layer_types", None):
            config.layer_types = config.layer_types[: self.layers]
        set_dropout(config, dropout)
        draft = self.model_class().from_config(config, dtype=torch.float32)
        source = {k: v.float() for k, v in self.target.state_dict().items()}
        missing = draft.load_state_dict({k: v for k, v in source.items() if k in draft.state_dict()}, strict=False)
        if missing.missing_keys:
            raise SpectuneError(f"the target lacks {missing.missing_keys[:3]}", where="model")
        draft.get_input_embeddings().requires_grad_(False)
        draft.get_output_embeddings().requires_grad_(False)
        return draft

    def prepare_model(self, model):
        """`--peft full` marks every weight trainable: the target's embeddings and output layer stay frozen."""
        model.get_input_embeddings().requires_grad_(False)
        model.get_output_embeddings().requires_grad_(False)
        return model

    def encode(self, prompts: list[Prompt]) -> list[dict]:
        from tqdm import tqdm

        from ..decode.engine import Request, decode_batch
        from ..generate import prompt_ids

        eos = self.target.generation_config.eos_token_id
        eos = set(eos if isinstance(eos, list) else [] if eos is None else [eos])
        keep = self.max_length - self.new_tokens
        if keep < 8:
            raise SpectuneError(f"--max-length {self.max_length} leaves no room for the prompt beside "
                                f"--draft-new-tokens {self.new_tokens}", where="max_length")
        ids = []
        for p in prompts:
            # --new-tokens 0: a chat is taken whole, its answers included (off-policy)
            one = prompt_ids(self.tok, p.prompt, raw=isinstance(p.prompt, str), answered=not self.new_tokens)
            one = one[0].tolist()
            self.truncated += len(one) > keep
            ids.append(one[-keep:])
        feats = []
        bar = tqdm(total=len(ids), desc="target answers" if self.new_tokens else "target labels", unit="prompt",
                   file=sys.stderr, leave=False)
        for start in range(0, len(ids), 8):  # 8 prompts decoded (and labelled) together
            chunk = ids[start:start + 8]
            if self.new_tokens:  # on-policy: the target writes its answers, labelled where it answered
                requests = [Request(x, max_new_tokens=self.new_tokens, eos=eos) for x in chunk]
                answers = {id(r): [] for r in requests}
                for events in decode_batch(self.target, requests):
                    for r, tokens in events:
                        answers[id(r)] += tokens
                feats += self._soft_labels([r.prompt + answers[id(r)] for r in requests], [len(x) for x in chunk])
            else:  # off-policy: the texts as they are, labelled at every position
                feats += self._soft_labels(chunk, [1] * len(chunk))
            bar.update(len(chunk))
        bar.close()
        return feats

    @torch.no_grad()
    def _soft_labels(self, seqs: list[list[int]], prompt_lens: list[int]) -> list[dict]:
        """The target's top-K next-token probabilities at every answer position of each sequence."""
        batch = {"input_ids": pad(seqs, 0), "attention_mask": pad([[1] * len(s) for s in seqs], 0)}
        return self._label_rows(logits_of(self.target, batch).float(), seqs, prompt_lens)

    def _label_rows(self, logits: torch.Tensor, seqs: list[list[int]], prompt_lens: list[int]) -> list[dict]:
        out = []
        for b, (seq, n) in enumerate(zip(seqs, prompt_lens, strict=True)):
            # position t predicts token t+1: the answer's tokens are predicted from positions n-1 .. len-2
            probs, top = logits[b, n - 1 : len(seq) - 1].softmax(-1).topk(TOP_K, -1)  # (A, K)
            out.append({"input_ids": seq, "start": n - 1, "top_ids": top.to(torch.int32),
                        "top_p": (probs / probs.sum(-1, keepdim=True)).to(torch.float16)})
        return out

    def collate(self, feats: list[dict]) -> dict:
        width = max(len(f["input_ids"]) for f in feats)
        top_ids = torch.zeros((len(feats), width, TOP_K), dtype=torch.long)  # (B, T, K)
        top_p = torch.zeros((len(feats), width, TOP_K))
        for b, f in enumerate(feats):
            a = f["top_ids"].shape[0]
            top_ids[b, f["start"] : f["start"] + a] = f["top_ids"].long()
            top_p[b, f["start"] : f["start"] + a] = f["top_p"].float()
        return {"input_ids": pad([f["input_ids"] for f in feats], self.tok.pad_token_id or 0),
                "attention_mask": pad([[1] * len(f["input_ids"]) for f in feats], 0),
                "top_ids": top_ids, "top_p": top_p}

    def loss(self, model, batch, reduction: str = "mean") -> torch.Tensor:
        logq = torch.log_softmax(logits_of(model, batch).float(), -1)  # (B, T, V)
        per_pos = -(batch["top_p"] * logq.gather(-1, batch["top_ids"])).sum(-1)  # (B, T); 0 off the answers
        if reduction == "sum":
            return per_pos.sum()
        return per_pos.sum() / (batch["top_p"].sum(-1) > 0).sum().clamp(min=1)

    @torch.no_grad()
    def evaluate(self, model, feats, examples, batch_size=8) -> dict:
        agree = total = 0
        loss = 0.0
        for i in range(0, len(feats), batch_size):
            batch = self.collate(feats[i:i + batch_size])
            logits = logits_of(model, batch)  # (B, T, V)
            answer = batch["top_p"].sum(-1) > 0  # (B, T)
            agree += int(((logits.argmax(-1) == batch["top_ids"][..., 0]) & answer).sum())
            total += int(answer.sum())
            loss += float(self.loss(model, batch, reduction="sum"))
        return {"task": "draft", "agreement": agree / max(total, 1), "loss": loss / max(total, 1),
                "positions": total}
