"""Verification: which drafted tokens the target accepts, and the token that follows.

Leviathan et al. / Chen et al. (2023): draft token d_i, drawn from q_i, is accepted with
probability min(1, p_i(d_i) / q_i(d_i)); at the first rejection the next token is drawn from
norm(max(0, p_i - q_i)); if all k are accepted, a bonus token is drawn from p_{k+1}. The tokens
emitted then follow p exactly. Greedy is the special case p = one-hot(argmax): accept while the
draft equals the target's argmax, then emit the target's argmax.
"""

from __future__ import annotations

import torch

from .sampling import pick


def verify(p: torch.Tensor, drafts: list[int], q: torch.Tensor | None,
           generator: torch.Generator | None) -> tuple[int, int]:
    """(number of drafts accepted, the token after them).

    p: (k+1, V) target distributions, row i for the position of drafts[i] (row k: the bonus);
    q: (k, V) draft distributions, or None for a deterministic drafter (q_i = one-hot(d_i)).
    """
    for i, d in enumerate(drafts):
        p_d = float(p[i, d])
        q_d = 1.0 if q is None else float(q[i, d])
        if p_d >= q_d:
            continue  # min(1, p/q) == 1: accepted without a draw
        if p_d > 0 and torch.rand((), generator=generator).item() < p_d / q_d:
            continue
        residual = p[i] - (torch.nn.functional.one_hot(torch.tensor(d), p.shape[-1]).float() if q is None else q[i])
        residual = residual.clamp(min=0)
        total = residual.sum()
        if total <= 0:  # p == q up to rounding: any draw from p is right
            return i, pick(p[i], generator)
        return i, pick(residual / total, generator)
    return len(drafts), pick(p[len(drafts)], generator)
