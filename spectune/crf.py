"""A linear-chain CRF output layer for token classification (`--crf`), which transformers does not ship.

The encoder's per-token scores are emissions; the CRF adds a learnt score for every tag-to-tag
transition (and for starting / ending on a tag), trains on the negative log-likelihood of the whole
gold tag sequence (forward algorithm), and decodes the best sequence with Viterbi. It learns what a
per-token softmax cannot: that I-PER never follows O or B-LOC, and that a surname tag is followed by
a given-name tag. Sequences are the *words* (first sub-tokens), gathered by the task; padded words are
masked out, and every sequence has at least one word.

The layer is stored beside the model as `crf.safetensors` (a (L, L) matrix and two (L,) vectors).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

FILE = "crf.safetensors"


class CRF(nn.Module):
    def __init__(self, num_tags: int):
        super().__init__()
        self.transitions = nn.Parameter(torch.zeros(num_tags, num_tags))  # [from, to]
        self.start = nn.Parameter(torch.zeros(num_tags))
        self.end = nn.Parameter(torch.zeros(num_tags))

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


def words(logits: torch.Tensor, labels: torch.Tensor):
    """The labelled positions (first sub-tokens) of each row moved to the front, in order: emissions
    (B', W, L), tags (B', W) and mask (B', W), over the rows B' that have any word. labels (B, T),
    -100 where a token is not a word's first."""
    is_word = labels != -100  # (B, T)
    keep = is_word.any(1)
    is_word, logits, labels = is_word[keep], logits[keep], labels[keep]
    order = (~is_word).to(torch.int8).argsort(dim=1, stable=True)  # words first, in their order
    width = int(is_word.sum(1).max()) if len(order) else 0
    order = order[:, :width]
    em = logits.gather(1, order.unsqueeze(-1).expand(-1, -1, logits.shape[-1]))
    return em, labels.gather(1, order).clamp(min=0), is_word.gather(1, order)


def attach(model, num_tags: int) -> CRF:
    """Register a CRF on the model (a plain or peft model), so the optimizer, accelerate's checkpoints and
    resume see its parameters with the encoder's."""
    crf = CRF(num_tags)
    model.add_module("crf", crf)
    # Kept out of the Hugging Face weights (`save` writes its own file), so `from_pretrained` sees no
    # unknown keys; accelerate's checkpoints still hold it.
    model._keys_to_ignore_on_save = {*(getattr(model, "_keys_to_ignore_on_save", None) or ()),
                                     *(f"crf.{k}" for k in crf.state_dict())}
    return crf


def save(model, folder: Path) -> None:
    from safetensors.torch import save_file

    crf = model.crf
    save_file({k: v.detach().contiguous() for k, v in crf.state_dict().items()}, str(Path(folder) / FILE))


def load(model, folder: Path, num_tags: int) -> None:
    from safetensors.torch import load_file

    attach(model, num_tags).load_state_dict(load_file(str(Path(folder) / FILE)))
