"""The decoding loop (batch 1): prefill, then either one target pass per token, or draft k tokens,
verify them in one target pass over k+1 positions, keep the accepted prefix and roll the KV cache
back over the rest.

Invariant: the target's cache holds every emitted token except the last one, `last`, which is
fed at the start of the next pass (alone, or in front of the drafts).
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch

from .sampling import Sampling, distribution, pick
from .speculative import verify


def forward(model, ids: list[int], cache):
    """Logits (len(ids), V) for `ids` appended to `cache`; returns (logits, cache)."""
    from transformers import DynamicCache

    if cache is None:
        cache = DynamicCache(config=model.config)
    key = "cache" if "cache" in _forward_params(type(model)) else "past_key_values"
    out = model(input_ids=torch.tensor([ids]), use_cache=True, **{key: cache})
    return out.logits[0], cache


GREEDY = Sampling()
_PARAMS: dict[type, set[str]] = {}


def _forward_params(cls: type) -> set[str]:
    if cls not in _PARAMS:
        _PARAMS[cls] = set(inspect.signature(cls.forward).parameters)
    return _PARAMS[cls]


@dataclass
class Metrics:
    new_tokens: int = 0
    drafted: int = 0
    accepted: int = 0
    target_passes: int = 0
    seconds: float = 0.0
    per_position: list[list[int]] = field(default_factory=list)  # [accepted, drafted] per draft position

    @property
    def acceptance(self) -> float:
        return self.accepted / self.drafted if self.drafted else 0.0

    @property
    def tau(self) -> float:
        """Mean tokens emitted per target pass, the bonus included (1.0 for plain decoding)."""
        return self.new_tokens / self.target_passes if self.target_passes else 0.0

    def as_dict(self) -> dict:
        return {"new_tokens": self.new_tokens, "drafted": self.drafted, "accepted": self.accepted,
                "acceptance": round(self.acceptance, 4), "target_passes": self.target_passes,
                "tau": round(self.tau, 3), "seconds": round(self.seconds, 3),
                "per_position_acceptance": [round(a / d, 3) if d else None for a, d in self.per_position]}


class AdaptiveK:
    """Draft length that grows while drafts are accepted and shrinks when they are not; after
    repeated misses at k=1 drafting pauses, so a poor drafter costs almost nothing."""

    def __init__(self, k: int = 4, k_max: int = 12):
        self.k, self.k_max, self.misses, self.pause, self.pause_len = k, k_max, 0, 0, 8

    def next(self) -> int:
        if self.pause:
            self.pause -= 1
            return 0
        return self.k

    def update(self, drafted: int, accepted: int) -> None:
        if drafted == 0:
            return
        if accepted:
            self.pause_len = 8
        if accepted == drafted:
            self.k, self.misses = min(self.k + 2, self.k_max), 0
        elif accepted < drafted / 2:
            self.k = max(1, self.k - 1)
            self.misses = self.misses + 1 if accepted == 0 else 0
            if self.k == 1 and self.misses >= 3:
                # Pause, then probe again; each fruitless probe doubles the pause (up to 64 steps).
                self.pause, self.misses = self.pause_len, 0
                self.pause_len = min(2 * self.pause_len, 64)


@torch.no_grad()
def decode(model, prompt: list[int], *, sampling: Sampling = GREEDY, max_new_tokens: int = 128,
           eos: set[int] | None = None, drafter=None, k: int = 4, adaptive: bool = True, seed: int | None = None,
           metrics: Metrics | None = None) -> Iterator[list[int]]:
    """Yield the new tokens of each target pass; `metrics` (if given) is filled in as it goes."""
    m = metrics if metrics is not None else Metrics()
    eos = eos or set()
    gen = torch.Generator().manual_seed(seed) if seed is not None else None
    t0 = time.perf_counter()
    tokens = list(prompt)
    logits, cache = forward(model, tokens, None)  # prefill
    m.target_passes += 1
    # Greedy without a penalty needs only argmaxes: no (k+1, V) distributions on the hot path.
    fast_greedy = sampling.greedy and sampling.repetition_penalty == 1.0
    last = int(logits[-1].argmax()) if fast_greedy else pick(distribution(logits[-1], torch.tensor(tokens),
                                                                          sampling), gen)
    plan = AdaptiveK(k) if adaptive else None
    while True:
        tokens.append(last)
        emitted = [last]
        done = last in eos or m.new_tokens + 1 >= max_new_tokens
        m.new_tokens += 1
        m.seconds = time.perf_counter() - t0
        yield emitted
        if done:
            return
        budget = max_new_tokens - m.new_tokens  # tokens we may still emit
        want = min(plan.next() if plan else k, budget - 1) if drafter is not None else 0
        drafts, q = drafter.propose(tokens, want, sampling, gen) if want > 0 else ([], None)
        drafts = drafts[:want]
        if q is not None:
            q = q[: len(drafts)]
        logits, cache = forward(model, [last, *drafts], cache)  # (1 + len(drafts), V)
        m.target_passes += 1
        if fast_greedy:  # verify's greedy case: accept while the draft is the target's argmax
            best = logits.argmax(-1).tolist()  # (1 + len(drafts),)
            n_ok = 0
            while n_ok < len(drafts) and drafts[n_ok] == best[n_ok]:
                n_ok += 1
            nxt = best[n_ok]
        else:
            # Target distributions at each position, with the penalty seeing the drafts before it.
            ctx = torch.tensor(tokens)
            p = torch.stack([distribution(logits[i], torch.cat([ctx, torch.tensor(drafts[:i], dtype=torch.long)]),
                                          sampling) for i in range(len(drafts) + 1)])
            n_ok, nxt = verify(p, drafts, q, gen)
        if drafts:
            m.drafted += len(drafts)
            m.accepted += n_ok
            while len(m.per_position) < len(drafts):
                m.per_position.append([0, 0])
            for i in range(len(drafts)):
                m.per_position[i][1] += 1
                m.per_position[i][0] += int(i < n_ok)
            if plan:
                plan.update(len(drafts), n_ok)
            if n_ok < len(drafts):
                cache.crop(n_ok - len(drafts))  # forget the rejected drafts' keys and values
        accepted = drafts[:n_ok]
        for i, t in enumerate(accepted):  # an EOS inside the accepted block ends the sequence there
            if t in eos:
                accepted = accepted[: i + 1]
                break
        if accepted:
            tokens.extend(accepted)
            m.new_tokens += len(accepted)
            m.seconds = time.perf_counter() - t0
            yield accepted
            if accepted[-1] in eos:
                return
        last = nxt
