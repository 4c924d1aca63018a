"""A linear-chain CRF output layer for token classification (`--crf`), which transformers does not ship.

The encoder's per-token scores are emissions; the CRF adds a learnt score for every tag-to-tag
transition (and for starting / ending on a tag), trains on the negative log-likelihood of the whole
gold tag sequence (forward algorithm), and decodes the best sequence with Viterbi. It learns what a
per-token softmax cannot: that I-PER never follows O or B-LOC, and that a surname tag is followed by
a given-name tag. Sequences are the *words* (first sub-tokens), gathered by the task; padded words are
masked out, and every sequence has at least one word.

With `feature_buckets` (`--ngram-features N`, see spectune/ngrams.py) the CRF also scores each word's
n-gram window directly, as a feature-rich linear CRF does: the word-level token ids (first sub-tokens;
one character each for Chinese) in a +-2 window, as 5 unigrams and the 4 bigrams around the word, each
hashed into one of N rows of an (N, L) table whose rows add to the encoder's emissions.

The layer is stored beside the model as `crf.safetensors` (a (L, L) matrix, two (L,) vectors, and the
(N, L) feature table when there is one: its shape says N, so the file describes itself).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from . import added_layers
from .ngrams import key

_UNIGRAMS, _BIGRAMS = (-2, -1, 0, 1, 2), (-2, -1, 0, 1)  # as baselines.char_features


class CRF(nn.Module):
    def __init__(self, num_tags: int, feature_buckets: int = 0):
        super().__init__()
        self.transitions = nn.Parameter(torch.zeros(num_tags, num_tags))  # [from, to]
        self.start = nn.Parameter(torch.zeros(num_tags))
        self.end = nn.Parameter(torch.zeros(num_tags))
        if feature_buckets:
            self.features = nn.Embedding(feature_buckets, num_tags)
            nn.init.zeros_(self.features.weight)  # an unseen n-gram adds nothing

    def feature_ids(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(B, W, 9) buckets of each word's n-gram features. ids (B, W) word token ids, mask (B, W)."""
        B, W = ids.shape
        n = mask.sum(1, keepdim=True)  # (B, 1) words per row
        pos = torch.arange(-2, W + 2).expand(B, -1)  # (B, W + 4): positions of the +-2 padded row
        padded = torch.cat([ids.new_full((B, 2), 0), ids, ids.new_full((B, 2), 0)], 1)
        # Outside the sentence: -1 before it, -2 after it (never a token id), also over right padding.
        padded = torch.where(pos < 0, -1, torch.where(pos >= n, -2, padded))
        at = {d: padded[:, 2 + d:2 + d + W] for d in _UNIGRAMS}  # (B, W) each
        keys = [key([at[d]], t) for t, d in enumerate(_UNIGRAMS)]
        keys += [key([at[d], at[d + 1]], 5 + t) for t, d in enumerate(_BIGRAMS)]
        return torch.stack(keys, -1).remainder(self.features.num_embeddings)

    def emissions(self, em: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The encoder's emissions (B, W, L) plus the n-gram feature scores, when this CRF has a table."""
        if getattr(self, "features", None) is None:
            return em
        return em.float() + self.features(self.feature_ids(ids, mask)).sum(2)  # (B, W, 9, L) -> (B, W, L)

    def nll(self, emissions: torch.Tensor, tags: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Summed negative log-likelihood of `tags`. emissions (B, W, L); tags, mask (B, W), mask[:, 0] all true."""
        emissions = emissions.float()
        return (self._log_partition(emissions, mask) - self._score(emissions, tags, mask)).sum()

    def _score(self, em, tags, mask):
        """(B,) score of the given paths: start + emissions + transitions + end, padded words masked out."""
        m = mask.float()
        emitted = (em.gather(2, tags.unsqueeze(-1)).squeeze(-1) * m).sum(1)
        moved = (self.transitions[tags[:, :-1], tags[:, 1:]] * m[:, 1:]).sum(1)
        last = tags.gather(1, (mask.sum(1) - 1).unsqueeze(1)).squeeze(1)
        return self.start[tags[:, 0]] + emitted + moved + self.end[last]

    def _log_partition(self, em, mask):
        alpha = self.start + em[:, 0]  # (B, L): log-sum of the scores of all paths ending in each tag
        for i in range(1, em.shape[1]):
            nxt = torch.logsumexp(alpha.unsqueeze(2) + self.transitions + em[:, i].unsqueeze(1), dim=1)
            alpha = torch.where(mask[:, i, None], nxt, alpha)
        return torch.logsumexp(alpha + self.end, dim=1)  # (B,)

    @torch.no_grad()
    def decode(self, emissions: torch.Tensor, mask: torch.Tensor) -> list[list[int]]:
        """Viterbi: the best tag sequence of each row, as long as its mask."""
        em = emissions.float()
        best = self.start + em[:, 0]  # (B, L)
        back = []
        for i in range(1, em.shape[1]):
            cand = best.unsqueeze(2) + self.transitions  # (B, L_from, L_to)
            score, arg = cand.max(dim=1)
            back.append(arg)
            best = torch.where(mask[:, i, None], score + em[:, i], best)
        best = best + self.end
        out = []
        for b, n in enumerate(mask.sum(1).tolist()):
            tag = int(best[b].argmax())
            path = [tag]
            for i in range(n - 1, 0, -1):
                tag = int(back[i - 1][b, tag])
                path.append(tag)
            out.append(path[::-1])
        return out


def words(logits: torch.Tensor, labels: torch.Tensor, input_ids: torch.Tensor):
    """The labelled positions (first sub-tokens) of each row moved to the front, in order: emissions
    (B', W, L), tags (B', W), mask (B', W) and the words' token ids (B', W), over the rows B' that have
    any word. labels, input_ids (B, T); labels -100 where a token is not a word's first."""
    is_word = labels != -100  # (B, T)
    keep = is_word.any(1)
    is_word, logits, labels, input_ids = is_word[keep], logits[keep], labels[keep], input_ids[keep]
    order = (~is_word).to(torch.int8).argsort(dim=1, stable=True)  # words first, in their order
    width = int(is_word.sum(1).max()) if len(order) else 0
    order = order[:, :width]
    em = logits.gather(1, order.unsqueeze(-1).expand(-1, -1, logits.shape[-1]))
    return em, labels.gather(1, order).clamp(min=0), is_word.gather(1, order), input_ids.gather(1, order)


def attach(model, num_tags: int, feature_buckets: int = 0) -> CRF:
    """Register a CRF on the model (spectune/added_layers.py: trained with it, stored beside it)."""
    return added_layers.attach(model, "crf", CRF(num_tags, feature_buckets))


def load(model, folder: Path, num_tags: int) -> None:
    state = added_layers.read(folder, "crf")
    buckets = state["features.weight"].shape[0] if "features.weight" in state else 0
    attach(model, num_tags, buckets).load_state_dict(state)
