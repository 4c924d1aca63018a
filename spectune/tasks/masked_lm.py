"""Masked-LM pre-training (`--task mlm`): the pre-train step of pre-train -> fine-tune.

Texts come from any file the other tasks read: a .txt (one text per line), a CoNLL / JSONL NER file
(each sentence's tokens), or a CSV / TSV / JSONL of labelled texts (the `--text-column`); labels are
ignored, so a task's own training file is also its pre-training corpus. Texts are joined with
[SEP] and cut into full blocks of `max_length` (packing: no padding, every position a candidate).
BERT's masking: 15% of the positions are targets; of those 80% become [MASK], 10% a random token,
10% stay. Dev masking is drawn from a fixed seed, so every evaluation scores the same targets.
The model is an encoder with a masked-LM head: a pretrained one (continued pre-training) or a
`scratch:bert-...` spec built at random over a character vocabulary (spectune/scratch.py).
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from ..errors import SpectuneError
from . import pad

IGNORE = -100
MASK_RATE = 0.15
DEV_SEED = 1234


def read_texts(path, text_column: str = "text") -> list[str]:
    from ..data import read_jsonl, read_lines, require_rows
    from ..data.conll import read_tagged
    from ..data.tabular import _delimited_rows

    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".txt":
        texts = [line for _, line in read_lines(path) if line.strip()]
    elif suffix in (".conll", ".bio", ".iob", ".tsv") and _looks_tagged(path):
        sents, _ = read_tagged(path)
        # Character-level files (one character per line) are joined without spaces, words with one.
        texts = ["".join(s.tokens) if all(len(t) == 1 for t in s.tokens) else " ".join(s.tokens) for s in sents]
    elif suffix in (".csv", ".tsv", ".jsonl", ".json"):
        rows = read_jsonl(path) if suffix in (".jsonl", ".json") else _delimited_rows(path, "\t" if suffix == ".tsv"
                                                                                       else ",")
        texts = []
        for where, row in rows:
            if "tokens" in row and isinstance(row["tokens"], list):  # a JSONL NER file
                texts.append(" ".join(map(str, row["tokens"])))
            elif text_column in row:
                texts.append(str(row[text_column]))
            else:
                raise SpectuneError(f"no column {text_column!r} (set --text-column)", where=where)
    else:
        raise SpectuneError("expected a .txt (one text per line), a CoNLL file, or a .csv/.tsv/.jsonl of texts",
                            where=str(path))
    return require_rows([t for t in texts if t.strip()], path, "texts")


def _looks_tagged(path: Path) -> bool:
    if path.suffix.lower() != ".tsv":
        return True
    from ..data import read_lines

    first = next((line for _, line in read_lines(path) if line.strip()), "")
    return "text" not in first.split("\t")  # a TSV with a header naming `text` is a table


class MaskedLM:
    name = "mlm"
    metric = "loss"
    metrics = ("loss", "perplexity", "accuracy")

    def __init__(self, tokenizer, labels=None, max_length=128, text_column="text", **_):
        self.tok, self.max_length, self.labels = tokenizer, max_length, None
        self.text_column = text_column
        if tokenizer.mask_token_id is None:
            raise SpectuneError("this tokenizer has no mask token; masked-LM pre-training needs an encoder "
                                "(a BERT-like model) or a scratch:bert spec", where="model")
        self.special = torch.tensor(sorted(set(tokenizer.all_special_ids)))

    def read(self, path, split="train") -> list[str]:
        return read_texts(path, self.text_column)

    def model_class(self):
        from transformers import AutoModelForMaskedLM

        return AutoModelForMaskedLM

    def encode(self, texts: list[str]) -> list[dict]:
        """Blocks of [CLS] text [SEP] text [SEP] ... of exactly max_length tokens (the last may be shorter)."""
        cls, sep = self.tok.cls_token_id, self.tok.sep_token_id
        stream: list[int] = []
        for ids in self.tok(texts, add_special_tokens=False).input_ids:
            stream += ids + ([sep] if sep is not None else [])
        body = self.max_length - (cls is not None)
        blocks = [stream[i:i + body] for i in range(0, len(stream), body)]
        return [{"input_ids": ([cls] if cls is not None else []) + b} for b in blocks if len(b) > 1]

    def collate(self, feats: list[dict], generator: torch.Generator | None = None) -> dict:
        ids = pad([f["input_ids"] for f in feats], self.tok.pad_token_id or 0)  # (B, T)
        attention = pad([[1] * len(f["input_ids"]) for f in feats], 0)
        can = attention.bool() & ~torch.isin(ids, self.special)
        target = can & (torch.rand(ids.shape, generator=generator) < MASK_RATE)
        labels = torch.where(target, ids, IGNORE)
        roll = torch.rand(ids.shape, generator=generator)
        inputs = ids.clone()
        inputs[target & (roll < 0.8)] = self.tok.mask_token_id
        swap = target & (roll >= 0.8) & (roll < 0.9)
        inputs[swap] = torch.randint(len(self.tok), ids.shape, generator=generator)[swap]
        return {"input_ids": inputs, "attention_mask": attention, "labels": labels}

    def loss(self, model, batch, logits=None) -> torch.Tensor:
        if logits is None:
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits  # (B, T, V)
        return torch.nn.functional.cross_entropy(logits.flatten(0, 1).float(), batch["labels"].flatten(),
                                                 ignore_index=IGNORE)

    @torch.no_grad()
    def evaluate(self, model, feats, _texts=None, batch_size=32) -> dict:
        g = torch.Generator().manual_seed(DEV_SEED)
        nll, right, n = 0.0, 0, 0
        for i in range(0, len(feats), batch_size):
            b = self.collate(feats[i:i + batch_size], generator=g)
            logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits  # (B, T, V)
            m = b["labels"] != IGNORE
            nll += float(torch.nn.functional.cross_entropy(logits[m].float(), b["labels"][m], reduction="sum"))
            right += int((logits[m].argmax(-1) == b["labels"][m]).sum())
            n += int(m.sum())
        loss = nll / max(n, 1)
        return {"task": "mlm", "loss": loss, "perplexity": math.exp(min(loss, 50)), "accuracy": right / max(n, 1),
                "targets": n}
