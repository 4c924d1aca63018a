"""How many tokens to draft next: the draft length policies.

AdaptiveK is for free drafters (prompt look-up): k grows while drafts pass and shrinks when they
fail, and drafting pauses (with doubling pauses) while the drafter keeps missing.

CostAwareK is for drafters that cost real time (a draft model): with a per-token acceptance
estimate a, a draft cost c per token and a verification cost v per extra position (both relative
to a one-token target pass), k drafts yield (1 - a^(k+1)) / (1 - a) tokens for 1 + v*k + c*k
passes' worth of time; it picks the k that maximises the ratio, and pauses (probing again later)
when no k beats plain decoding. c is the ratio of weight bytes read per token (draft over target),
not a clock reading, so a seeded run drafts the same tokens every time.

pass_width is for batches: a pass of n rows (each row's last token and its drafts) costs more than
a one-token pass once n outgrows what the weight reads hide (measured on this CPU, SmolLM2-135M,
lean forward, 200-token context, relative to one row: fp32 1.30 at 4 rows, 2.51 at 20; int8 1.76
and 5.38). At batch 1 extra drafts are nearly free, at batch 4 they are not: four rows drafting 4
tokens each made a fp32 pass 1.9x a plain batch pass, more than look-up's accepted tokens paid
back, and look-up streams ran below plain ones. With transformers' forward every row is padded to
the longest row's drafts; ours feeds only the real positions (lean_llama.fed_rows), so one row's
drafts cost only their own rows.
"""

from __future__ import annotations


class AcceptanceEstimate:
    """A running (decayed) estimate of a row's per-token draft acceptance; prior 0.5 until drafts are
    seen. Both policies keep one: CostAwareK to choose k, and the batch to choose its width."""

    def __init__(self, decay: float = 0.9):
        self.decay, self.hits, self.trials = decay, 1.0, 2.0

    @property
    def acceptance(self) -> float:
        return self.hits / self.trials

    def observe(self, drafted: int, accepted: int) -> None:
        # Drafts are tried in order until the first rejection: `accepted` passes and at most one failure.
        self.hits = self.decay * self.hits + accepted
        self.trials = self.decay * self.trials + accepted + (accepted < drafted)


class AdaptiveK(AcceptanceEstimate):
    """Draft length that grows while drafts are accepted and shrinks when they are not; after
    repeated misses at k=1 drafting pauses, so a poor drafter costs almost nothing."""

    def __init__(self, k: int = 4, k_max: int = 12, decay: float = 0.9):
        super().__init__(decay)
        self.k, self.k_max, self.misses, self.pause, self.pause_len = k, k_max, 0, 0, 8

    def next(self) -> int:
        if self.pause:
            self.pause -= 1
            return 0
        return self.k

    def update(self, drafted: int, accepted: int) -> None:
        if drafted == 0:
            return
        self.observe(drafted, accepted)
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


class CostAwareK(AcceptanceEstimate):
    """Draft length for drafters that cost time per token: see the module's docstring."""

    def __init__(self, cost: float, extra: float = 0.05, k_max: int = 8, decay: float = 0.9):
        super().__init__(decay)
        self.k_max = k_max
        self.extra = extra  # verification cost per extra position, relative to a one-token pass
        self.c = cost  # draft cost per token, relative to a one-token target pass
        self.pause, self.pause_len, self.probe = 0, 4, False

    def update(self, drafted: int, accepted: int) -> None:
        if drafted:
            self.observe(drafted, accepted)

    def next(self) -> int:
        if self.pause:
            self.pause -= 1
            return 0
        if self.probe:  # after a pause, one draft token to see whether acceptance came back
            self.probe = False
            return 1
        best_k, best = 0, 1.0  # plain decoding: one token per one pass
        for k in range(1, self.k_max + 1):
            value = expected_tokens(self.acceptance, k) / (1 + self.extra * k + self.c * k)
            if value > best * 1.02:  # a gain worth the risk of a noisy estimate
                best_k, best = k, value
        if best_k == 0:  # drafting would not pay now: decode plainly a while, then probe with one token
            self.pause, self.pause_len, self.probe = self.pause_len, min(2 * self.pause_len, 64), True
            return 0
        self.pause_len = 4
        return best_k


def row_cost(bytes_per_weight: float, bf16_pairs: bool = False) -> float:
    """Cost of one more row in a pass, relative to a one-row pass, for weights of this width:
    a fit to the measurements above (fp32 0.085, bf16 0.135, int8 0.215): the narrower the weights,
    the sooner the products stop being bound by reading them. With `bf16_pairs` (AVX512_BF16:
    cpu_kernel.bf16_pairs, linear.c) bf16 and int8 weights multiply activations rounded to bf16, twice
    the products per instruction: measured (20 positions, 28; one run per dtype, the widening and
    pair builds interleaved in it) bf16 2.40x / 3.07x a one-position pass (widening: 3.32x / 4.62x),
    int8 3.82x / 5.00x (5.90x / 7.57x), fp32 2.87x / 3.94x (its own run of the same script): bf16
    then costs what fp32 does per row, int8 about 0.145."""
    if bf16_pairs and bytes_per_weight == 2:
        return row_cost(4)
    if bf16_pairs and bytes_per_weight == 1:
        return 0.145
    return 0.085 * (4 / bytes_per_weight) ** (2 / 3)


def row_tile(bytes_per_weight: float, bf16_pairs: bool = False) -> int:
    """How many positions of a pass our product kernels multiply per load of a weight chunk (linear.c:
    XT_PAIRS = 6 rows of x in bf16 pairs, 8 when the weights are widened to fp32). Up to that many a
    pass's cost grows slowly; one more starts another tile. Measured here (SmolLM2-135M, lean forward,
    a 150-token context; pass time over a one-position pass's, medians of 15): int8 1.21x at 6
    positions, 1.59x at 7; fp32 1.28x at 8, 1.46x at 9; bf16 1.28x at 6, 1.40x at 7."""
    return 6 if bf16_pairs and bytes_per_weight < 4 else 8


def expected_tokens(acceptance: float, k: int) -> float:
    """Tokens a row emits from k drafts accepted in order with probability `acceptance` each, the
    target's own token included: 1 + a + a^2 + ... + a^k."""
    a = min(acceptance, 0.999)
    return (1 - a ** (k + 1)) / (1 - a)


def pass_width(drafts: list[int], acceptance: list[float], alpha: float, fixed: list[bool] | None = None,
               ragged: bool = False, limit: int = 31) -> int:
    """The number of drafts per row (a cap k) that maximises the batch's expected tokens per unit of
    pass time, for rows offering `drafts[b]` drafts with acceptance estimate `acceptance[b]`. A pass
    of n rows costs 1 + alpha * (n - 1) one-row passes, n = batch * (1 + k) when rows are padded to
    the longest, sum(1 + min(k, drafts[b])) when the forward feeds only real positions (`ragged`),
    and at most `limit`. Rows marked `fixed` keep all their drafts (a seeded sampled row: its text
    depends on how many it drafts, and must not depend on its batch), so k is at least theirs."""
    fixed = fixed or [False] * len(drafts)
    floor = max((d for d, f in zip(drafts, fixed, strict=True) if f), default=0)

    def value(k: int) -> float | None:
        used = [d if f else min(k, d) for d, f in zip(drafts, fixed, strict=True)]
        rows = sum(1 + u for u in used) if ragged else len(drafts) * (1 + max(used, default=0))
        if rows > limit and k > floor:
            return None
        return sum(expected_tokens(a, u) for u, a in zip(used, acceptance, strict=True)) / (1 + alpha * (rows - 1))

    best_k, best = floor, value(floor)
    for k in range(floor + 1, max(drafts, default=0) + 1):
        v = value(k)
        if v is None:
            break
        if v > best * 1.02:  # a longer pass must win clearly: the estimates are noisy
            best_k, best = k, v
    return best_k
