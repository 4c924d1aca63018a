"""Hashed token-id n-grams: the sparse lexical features classical baselines live on, as trainable
tables whose rows add to a neural model's scores (`--ngram-features N`).

A small encoder pre-trained on little text learns "these two characters form this word" or "this
trigram is praise" slowly; a linear model over n-gram identities learns it in one pass, and is why a
CRF or TF-IDF + logistic regression beat such an encoder alone. Adding the rows of a hashed (N, L)
table to the encoder's scores (Huang, Xu and Yu 2015 connect hand features straight to the output
layer the same way) gives the model both: the encoder for context, the table for lexical identity.
Both are trained together by the task's loss. N = 2^20 rows keep collisions rare; a collision only
blurs two n-grams. Tables start at zero, so an n-gram never seen in training adds nothing.

- NER (spectune/crf.py): per word, its token-id window (unigrams at +-2, the 4 bigrams around it),
  as the CRF baseline's features; the rows add to the CRF's emissions.
- classify (`NgramBag` here): per text, the sum of its token-id 1- to 3-grams' rows over the square
  root of their count, added to the classifier's logits: the scale of a linear model over an
  L2-normalised bag (TF-IDF + logistic regression), trained with the encoder. Stored beside the model
  as `ngrams.safetensors`, whose table's shape says N.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from . import added_layers

# Odd 64-bit multipliers; int64 products wrap, deterministically on every platform torch runs on.
MIX = (0x9E3779B97F4A7C15 - (1 << 64), 0xC2B2AE3D27D4EB4F - (1 << 64))


def key(grams: list[torch.Tensor], template: int) -> torch.Tensor:
    """One int64 key per position from the ids of an n-gram (a list of equal-shape tensors) and the
    template it fills (its length or offset), so that equal ids in different templates hash apart."""
    k = grams[0] * MIX[0]
    for i, g in enumerate(grams[1:]):
        k = (k + g) * MIX[(i + 1) % 2]
    return k + template


class NgramBag(nn.Module):
    """A text's token-id 1..n-grams' rows, summed over sqrt(count): (B, T) ids -> (B, L) scores. A mean
    would shrink a long text's scores towards zero; an L2-normalised bag of n distinct n-grams has
    entries of 1/sqrt(n), so a linear model over it scores sum(w) / sqrt(n)."""

    def __init__(self, buckets: int, num_labels: int, n: int = 3):
        super().__init__()
        self.n = n
        self.table = nn.Embedding(buckets, num_labels)
        nn.init.zeros_(self.table.weight)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        B, T = input_ids.shape
        total = torch.zeros(B, self.table.embedding_dim, device=input_ids.device)
        count = torch.zeros(B, 1, device=input_ids.device)
        for n in range(1, min(self.n, T) + 1):
            grams = [input_ids[:, i:T - n + 1 + i] for i in range(n)]  # n tensors (B, T - n + 1)
            valid = attention_mask[:, n - 1:].bool()  # right padding: valid iff its last token is
            rows = self.table(key(grams, n).remainder(self.table.num_embeddings))  # (B, T - n + 1, L)
            total = total + (rows * valid.unsqueeze(-1)).sum(1)
            count = count + valid.sum(1, keepdim=True)
        return total / count.clamp(min=1).sqrt()  # (B, L)


def attach(model, buckets: int, num_labels: int) -> NgramBag:
    """Register the table on the model (spectune/added_layers.py: trained with it, stored beside it)."""
    return added_layers.attach(model, "ngrams", NgramBag(buckets, num_labels))


def load(model, folder: Path) -> None:
    state = added_layers.read(folder, "ngrams")
    buckets, labels = state["table.weight"].shape
    attach(model, buckets, labels).load_state_dict(state)
