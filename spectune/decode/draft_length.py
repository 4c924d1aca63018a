"""How many tokens to draft next: the draft length policies.

AdaptiveK is for free drafters (prompt look-up): k grows while drafts pass and shrinks when they
fail, and drafting pauses (with doubling pauses) while the drafter keeps missing.

CostAwareK is for drafters that cost real time (a draft model): with a per-token acceptance
estimate a, a draft cost c per token and a verification cost v per extra position (both relative
to a one-token target pass), k drafts yield (1 - a^(k+1)) / (1 - a) tokens for 1 + v*k + c*k
passes' worth of time; it picks the k that maximises the ratio, and pauses (probing again later)
when no k beats plain decoding. c is the ratio of weight bytes read per token (draft over target),
not a clock reading, so a seeded run drafts the same tokens every time.
"""

from __future__ import annotations


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


class CostAwareK:
    """Draft length for drafters that cost time per token: see the module's docstring."""

    def __init__(self, cost: float, extra: float = 0.05, k_max: int = 8, decay: float = 0.9):
        self.k_max, self.decay = k_max, decay
        self.hits, self.trials = 1.0, 2.0  # prior: acceptance 0.5 until drafts are seen
        self.extra = extra  # verification cost per extra position, relative to a one-token pass
        self.c = cost  # draft cost per token, relative to a one-token target pass
        self.pause, self.pause_len, self.probe = 0, 4, False

    @property
    def acceptance(self) -> float:
        return self.hits / self.trials

    def update(self, drafted: int, accepted: int) -> None:
        if drafted == 0:
            return
        # Drafts are tried in order until the first rejection: `accepted` passes and at most one failure.
        self.hits = self.decay * self.hits + accepted
        self.trials = self.decay * self.trials + accepted + (accepted < drafted)

    def next(self) -> int:
        if self.pause:
            self.pause -= 1
            return 0
        if self.probe:  # after a pause, one draft token to see whether acceptance came back
            self.probe = False
            return 1
        a = min(self.acceptance, 0.999)
        best_k, best = 0, 1.0  # plain decoding: one token per one pass
        for k in range(1, self.k_max + 1):
            value = (1 - a ** (k + 1)) / (1 - a) / (1 + self.extra * k + self.c * k)
            if value > best * 1.02:  # a gain worth the risk of a noisy estimate
                best_k, best = k, value
        if best_k == 0:  # drafting would not pay now: decode plainly a while, then probe with one token
            self.pause, self.pause_len, self.probe = self.pause_len, min(2 * self.pause_len, 64), True
            return 0
        self.pause_len = 4
        return best_k
