"""Turning logits into the distribution a token is drawn from, identically for target and draft.

Speculative decoding is exact only if the target's p and the draft's q are the distributions the
tokens were really drawn from, after the same temperature, top-k, top-p and penalty. Both sides
call `distribution` with the same settings; greedy (temperature 0) is the one-hot of the argmax.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Sampling:
    temperature: float = 0.0  # 0: greedy
    top_k: int = 0  # 0: off
    top_p: float = 1.0  # 1: off
    repetition_penalty: float = 1.0  # 1: off

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


def distribution(logits: torch.Tensor, seen: torch.Tensor | None, s: Sampling) -> torch.Tensor:
    """Probabilities (V,) from one position's logits (V,); `seen` holds the token ids so far."""
    logits = logits.float()
    if s.repetition_penalty != 1.0 and seen is not None and seen.numel():
        # CTRL-style penalty, as transformers applies it: shrink positive logits, grow negative ones.
        picked = logits[seen]
        logits = logits.scatter(0, seen, torch.where(picked > 0, picked / s.repetition_penalty,
                                                     picked * s.repetition_penalty))
    if s.greedy:
        return torch.nn.functional.one_hot(logits.argmax(), logits.shape[-1]).float()
    logits = logits / s.temperature
    if s.top_k and s.top_k < logits.shape[-1]:
        kth = torch.topk(logits, s.top_k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if s.top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        drop = cum - sorted_logits.softmax(-1) >= s.top_p  # keep the smallest prefix reaching top_p
        logits = logits.masked_fill(torch.zeros_like(drop).scatter(0, order, drop), float("-inf"))
    return logits.softmax(-1)


def pick(probs: torch.Tensor, generator: torch.Generator | None) -> int:
    """One token from (V,) probabilities (the argmax of a one-hot is exact, no draw needed)."""
    if probs.max() == 1.0:
        return int(probs.argmax())
    return int(torch.multinomial(probs, 1, generator=generator))
