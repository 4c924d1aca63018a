"""Sequence classification (sentiment, topic): one label per text, optional class weights, and
optionally a table of hashed n-gram scores added to the logits (`ngram_features`, spectune/ngrams.py)."""

from __future__ import annotations

import torch

from ..data.tabular import LabelledText, read_labelled
from . import check_known_labels, logits_of, pad


class SequenceClassification:
    name = "classify"
    metric = "accuracy"
    metrics = ("accuracy", "macro_f1", "loss")

    def __init__(self, tokenizer, labels=None, max_length=256, text_column="text", label_column="label",
                 class_weights=False, ngram_features=0, **_):
        self.tok, self.labels, self.max_length = tokenizer, labels, max_length
        self.columns = (text_column, label_column)
        self.class_weights = class_weights
        self.weights = None  # (L,) set from the training labels when class_weights is on
        self.truncated = 0
        self.ngram_features = ngram_features

    def read(self, path, split="train") -> list[LabelledText]:
        rows = read_labelled(path, *self.columns)
        if split == "train":
            if self.labels is None:
                self.labels = sorted({r.label for r in rows})
            if self.class_weights:
                counts = torch.tensor([sum(r.label == lab for r in rows) for lab in self.labels], dtype=torch.float)
                # inverse frequency, normalised so a balanced set gets weights of 1
                self.weights = counts.sum() / (len(self.labels) * counts.clamp(min=1))
        else:
            check_known_labels([(r.label, r.where) for r in rows], self.labels, split)
        return rows

    def model_class(self):
        from transformers import AutoModelForSequenceClassification

        return AutoModelForSequenceClassification

    def prepare_model(self, model):
        """The n-gram table on a freshly built (and tuned) model; it trains with the encoder."""
        if self.ngram_features:
            from ..ngrams import attach

            attach(model, self.ngram_features, len(self.labels))
        return model

    def encode(self, rows: list[LabelledText]) -> list[dict]:
        lid = {label: i for i, label in enumerate(self.labels)}
        enc = self.tok([r.text for r in rows], truncation=True, max_length=self.max_length)
        self.truncated = sum(len(ids) >= self.max_length for ids in enc.input_ids)
        return [{"input_ids": ids, "label": lid.get(r.label, -1)} for ids, r in zip(enc.input_ids, rows, strict=True)]

    def collate(self, feats: list[dict]) -> dict:
        return {"input_ids": pad([f["input_ids"] for f in feats], self.tok.pad_token_id or 0),
                "attention_mask": pad([[1] * len(f["input_ids"]) for f in feats], 0),
                "labels": torch.tensor([f["label"] for f in feats], dtype=torch.long)}

    def logits(self, model, batch) -> torch.Tensor:
        logits = logits_of(model, batch).float()  # (B, L)
        if self.ngram_features:
            from ..added_layers import find

            logits = logits + find(model, "ngrams")(batch["input_ids"], batch["attention_mask"])
        return logits

    def loss(self, model, batch, logits=None) -> torch.Tensor:
        logits = self.logits(model, batch) if logits is None else logits
        w = None if self.weights is None else self.weights.to(batch["labels"].device)
        return torch.nn.functional.cross_entropy(logits, batch["labels"], weight=w)

    @torch.no_grad()
    def scores(self, model, feats, batch_size=32) -> tuple[torch.Tensor, float]:
        """Class probabilities (N, L) and the mean loss, in one pass over `feats`."""
        probs, total = [], 0.0
        for i in range(0, len(feats), batch_size):
            batch = self.collate(feats[i:i + batch_size])
            logits = self.logits(model, batch)
            probs.append(logits.softmax(-1))
            if (batch["labels"] >= 0).all():
                total += float(self.loss(model, batch, logits)) * len(batch["labels"])
        return torch.cat(probs), total / max(len(feats), 1)

    def predict_proba(self, model, feats, batch_size=32) -> torch.Tensor:
        return self.scores(model, feats, batch_size)[0]

    def evaluate(self, model, feats, rows) -> dict:
        from ..evaluate import classification_report

        probs, loss = self.scores(model, feats)
        pred = probs.argmax(-1).tolist()
        report = classification_report([r.label for r in rows], [self.labels[p] for p in pred], self.labels)
        report["loss"] = loss
        return report
