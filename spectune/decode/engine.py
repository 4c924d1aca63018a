"""The decoding loop, batched: prefill, then one target pass per step for every row of the batch,
feeding each row its last token alone (plain) or followed by its drafts (speculative), verifying
the drafts, keeping each row's accepted prefix and rolling the rest of the KV cache back.

Rows are independent requests: own sampling settings, seed, drafter state, stop conditions and
metrics; a row that ends (EOS, length, cancelled) leaves the batch, and new requests can join a
running batch between steps (continuous batching). Ragged lengths live in one cache, see
ragged_cache.py. Batch 1 is the same loop with one row.

Invariant: the target's cache holds every emitted token of a row except its last one, `last`,
which is fed at the start of the next pass (alone, or in front of the drafts).
"""

from __future__ import annotations

import contextlib
import inspect
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch

from .. import cpu_kernel
from ..quantize import weight_bytes, weight_width
from . import lean_llama, lookup_tree, ragged_cache
from .draft_length import AdaptiveK, CostAwareK, pass_width, row_cost, row_tile
from .lean_llama import STEP_ROWS  # passes of fewer rows are our kernels' steps; longer ones MKL's, whose bits differ
from .sampling import Sampling, distribution
from .speculative import verify


def forward(model, ids: list[int], cache, last_only: bool = False):
    """Logits (len(ids), V) for `ids` appended to `cache`, or (1, V) for the last one only with
    `last_only` (a draft model catching up on a prompt: the output layer over every position would
    cost more than its layers); returns (logits, cache)."""
    from transformers import DynamicCache

    if cache is None:
        cache = DynamicCache(config=model.config)
    extra = cache_kwargs(model, cache)
    if last_only and len(ids) > 1 and "logits_to_keep" in forward_params(model):
        extra["logits_to_keep"] = 1
    out = model(input_ids=torch.tensor([ids]), use_cache=True, **extra)
    return out.logits[0], cache


@contextlib.contextmanager
def final_hidden(model):
    """Capture the target's last hidden states (B, T, H), the features its output layer reads, during
    a forward: a hook on the decoder stack, outside a compiled forward (see compiled.py)."""
    box: dict = {}

    def hook(_module, _args, out):
        box["hidden"] = out[0] if isinstance(out, tuple) else out.last_hidden_state

    handle = model.get_decoder().register_forward_hook(hook)
    try:
        yield box
    finally:
        handle.remove()


GREEDY = Sampling()
_PARAMS: dict[type, set[str]] = {}


def forward_params(model) -> set[str]:
    cls = type(model)
    if cls not in _PARAMS:
        _PARAMS[cls] = set(inspect.signature(cls.forward).parameters)
    return _PARAMS[cls]


def cache_kwargs(model, cache) -> dict:
    """The cache argument under its name: transformers 5.x renames `past_key_values` to `cache`."""
    return {"cache" if "cache" in forward_params(model) else "past_key_values": cache}


@dataclass
class Metrics:
    new_tokens: int = 0
    drafted: int = 0
    accepted: int = 0
    target_passes: int = 0
    seconds: float = 0.0
    branch_accepted: int = 0  # accepted tokens on a branch of a tree draft rather than its chain (lookup_tree.py)
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
                "tau": round(self.tau, 3), "seconds": round(self.seconds, 3), "branch_accepted": self.branch_accepted,
                "per_position_acceptance": [round(a / d, 3) if d else None for a, d in self.per_position]}


def forward_batch(model, input_ids: torch.Tensor, mask: torch.Tensor, cache, last_only: bool = False,
                  hidden: bool = False, tree: torch.Tensor | None = None):
    """Logits (B, T, V) for input_ids (B, T) appended to `cache`; mask (B, S+T) says which cache
    columns each row attends to; each row's positions count only its own attended columns.
    `last_only`: logits of the last position only, (B, 1, V): a prefill needs no more, and the
    output layer over every prompt position would be the largest product of the pass.
    `tree` (B, T, T) bool, on our forward only (`takes_trees`): position t of the pass sees position j
    of it only where tree[b, t, j] (its ancestors in a tree of drafts), and sits at the depth that
    gives it (lookup_tree.py).
    Returns (logits, final hidden states (B, T, H) if `hidden`, for drafters that read them, else None)."""
    positions = (mask.cumsum(1) - 1).clamp(min=0)[:, -input_ids.shape[1]:]  # (B, T)
    extra = cache_kwargs(model, cache)
    if last_only and "logits_to_keep" in forward_params(model):
        extra["logits_to_keep"] = 1
    if tree is not None:  # a node's position: the row's attended cache columns plus its depth
        positions = mask[:, : -input_ids.shape[1]].sum(1, keepdim=True) + tree.sum(-1) - 1  # (B, T)
        extra["spectune_tree"] = tree
    # A ragged pass (rows verifying different numbers of drafts, padded to the longest) on our
    # forward: the stack computes only the positions fed, and so does the output layer here.
    fed = None if last_only or not lean_llama.installed(model) else lean_llama.fed_rows(mask, *input_ids.shape)
    with final_hidden(model) if hidden else contextlib.nullcontext({}) as box:
        if fed is None and tree is None:
            return model(input_ids=input_ids, attention_mask=mask, position_ids=positions, use_cache=True,
                         **extra).logits, box.get("hidden")
        out = model.get_decoder()(input_ids=input_ids, attention_mask=mask, position_ids=positions,
                                  use_cache=True, **extra)
    h = out.last_hidden_state  # (B, T, H)
    if fed is None:
        return model.get_output_embeddings()(h), box.get("hidden")
    at = fed.long()
    logits = model.get_output_embeddings()(h.reshape(-1, h.shape[-1])[at])  # (m, V)
    full = logits.new_zeros(h.shape[0] * h.shape[1], logits.shape[-1]).index_copy_(0, at, logits)
    return full.view(*h.shape[:2], -1), box.get("hidden")  # (B, T, V); padding positions' logits are 0


@dataclass(eq=False)
class Request:
    """One prompt to continue; the engine fills in `metrics` and `finish_reason` as it goes."""

    prompt: list[int]
    sampling: Sampling = GREEDY
    max_new_tokens: int = 128
    eos: set[int] = field(default_factory=set)
    seed: int | None = None
    metrics: Metrics = field(default_factory=Metrics)
    cancelled: bool = False  # set by a consumer that stops reading (a stop string, a closed connection)
    finish_reason: str | None = None  # "stop" (EOS), "length", "cancelled"

    def _start(self, drafter, k: int, adaptive: bool, cost: float | None = None) -> None:
        if not self.prompt:
            raise ValueError("a prompt needs at least one token")
        self.tokens = list(self.prompt)  # prompt + every emitted token (the drafters' and penalty's context)
        self.gen = torch.Generator().manual_seed(self.seed) if self.seed is not None else None
        self.drafter = drafter.fork() if hasattr(drafter, "fork") else drafter  # per-row draft state
        # Free drafters (look-up) grow and shrink k on acceptance alone; draft models weigh acceptance
        # against their cost (weight bytes per token relative to the target's).
        self.plan = None if not adaptive else CostAwareK(cost) if cost is not None else AdaptiveK(k)
        self.k = k
        # Greedy without a penalty needs only argmaxes: no (k+1, V) distributions on the hot path.
        self.fast = self.sampling.greedy and self.sampling.repetition_penalty == 1.0
        self.t0 = time.perf_counter()

    def _emit(self, accepted: list[int], nxt: int) -> list[int]:
        """Append the accepted drafts and the next token, up to EOS or the length limit."""
        out = []
        for t in [*accepted, nxt]:
            out.append(t)
            self.metrics.new_tokens += 1
            if t in self.eos:
                self.finish_reason = "stop"
                break
            if self.metrics.new_tokens >= self.max_new_tokens:
                self.finish_reason = "length"
                break
        self.tokens.extend(out)
        self.last = out[-1]
        self.metrics.seconds = time.perf_counter() - self.t0
        return out

    def _pick(self, logits: torch.Tensor, best: list[int], drafts: list[int], q) -> tuple[int, int]:
        """(drafts accepted, next token) from this row's logits (1 + len(drafts), V)."""
        if self.fast:  # verify's greedy case: accept while the draft is the target's argmax
            n_ok = 0
            while n_ok < len(drafts) and drafts[n_ok] == best[n_ok]:
                n_ok += 1
            return n_ok, best[n_ok]
        # Target distributions at each position, with the penalty seeing the drafts before it.
        ctx = torch.tensor(self.tokens)
        p = torch.stack([distribution(logits[i], torch.cat([ctx, torch.tensor(drafts[:i], dtype=torch.long)]),
                                      self.sampling) for i in range(len(drafts) + 1)])
        return verify(p, drafts, q, self.gen)


class Batch:
    """The rows being decoded together and their shared, ragged KV cache."""

    def __init__(self, model, *, drafter=None, k: int = 4, adaptive: bool = True, pad_id: int = 0):
        self.model, self.drafter, self.k, self.adaptive, self.pad_id = model, drafter, k, adaptive, pad_id
        self.draft_cost = None  # a draft model's cost per token, relative to a target pass (by bytes read)
        if getattr(drafter, "costly", False):
            self.draft_cost = weight_bytes(drafter.model) / max(weight_bytes(model), 1)
        # A drafter that reads the target's features (a draft head) is handed those of every position kept.
        self.hidden = getattr(drafter, "observes", False)
        # A drafter that offers a tree (look-up: lookup_tree.py), verified in one pass, on our forward.
        # (Not for one that reads the target's features: it is handed the kept positions in order.)
        self.trees = hasattr(drafter, "propose_tree") and not self.hidden and lean_llama.takes_trees(model)
        self.ragged = lean_llama.installed(model)  # a pass computes only the positions fed, not the padding
        width = weight_width(model)  # the cost of one more row in a pass, see draft_length.py
        pairs = self.ragged and width < 4 and cpu_kernel.bf16_pairs()
        self.alpha, self.tile = row_cost(width, bf16_pairs=pairs), row_tile(width, bf16_pairs=pairs)
        self.rows: list[Request] = []
        self.cache = None
        self.mask = torch.zeros((0, 0), dtype=torch.long)  # (B, S): which cache columns each row sees

    def __len__(self) -> int:
        return len(self.rows)

    @torch.no_grad()
    def add(self, requests: list[Request]) -> list[tuple[Request, list[int]]]:
        """Prefill new requests and join them to the batch; returns each one's first token."""
        from transformers import DynamicCache

        for r in requests:
            r._start(self.drafter, self.k, self.adaptive, self.draft_cost)
        # Each prompt is prefilled on its own and the caches are then merged (left-padded): a padded
        # batch pass would multiply every row to the longest prompt's length (four prompts of 50 to
        # 220 tokens: 880 rows of products instead of 520), and a row's prompt pass is then the one
        # it gets at batch 1.
        cache, mask, last = None, None, []
        for r in requests:
            ids, own_mask = ragged_cache.left_pad([r.prompt], self.pad_id)
            own = DynamicCache(config=self.model.config)
            logits, hidden = forward_batch(self.model, ids, own_mask, own, last_only=True, hidden=self.hidden)
            if hidden is not None:
                r.drafter.observe(hidden[0])
            last.append(logits[0, -1])
            cache, mask = (own, own_mask) if cache is None else ragged_cache.merge(cache, mask, own, own_mask)
        logits = torch.stack(last)  # (b, V)
        best = logits.argmax(-1).tolist()
        events = []
        for b, r in enumerate(requests):
            r.metrics.target_passes += 1
            _, first = r._pick(logits[b : b + 1], best[b : b + 1], [], None)
            events.append((r, r._emit([], first)))
        if self.rows:
            self.cache, self.mask = ragged_cache.merge(self.cache, self.mask, cache, mask)
        else:
            self.cache, self.mask = cache, mask
        self.rows += requests
        self._drop_finished()
        return events

    @torch.no_grad()
    def step(self) -> list[tuple[Request, list[int]]]:
        """One target pass for every row: returns (request, new tokens) for each."""
        # A verification pass stays within the rows our kernels take (STEP_ROWS), so every row of it
        # is computed as a one-token step computes it, bit for bit. A sampled row keeps its own drafts
        # (how many it drafts moves its random draws, and a seeded request must give the same text
        # whether or not it shares a batch): at most its share of those rows. Greedy rows share what
        # is left: every row is padded to the longest row's drafts (or, on our forward, only the
        # positions fed are computed), and a pass's cost grows with its rows, so the batch's draft
        # length is chosen for the batch as a whole (draft_length.pass_width): before a draft model
        # spends time on drafts, and again on what the drafters offered (look-up finds fewer, or none).
        share = (STEP_ROWS - 1) // len(self.rows) - 1
        fixed = [not r.sampling.greedy for r in self.rows]
        wants = [min(r.plan.next() if r.plan else r.k, r.max_new_tokens - r.metrics.new_tokens - 1,
                     share if f or not self.adaptive else STEP_ROWS - 1 - len(self.rows))
                 if r.drafter is not None else 0 for r, f in zip(self.rows, fixed, strict=True)]
        shared = self.adaptive and len(self.rows) > 1
        acceptance = [r.plan.acceptance for r in self.rows] if shared else []
        if shared:
            cap = pass_width(wants, acceptance, self.alpha, fixed, self.ragged, STEP_ROWS - 1)
            wants = [w if f else min(w, cap) for w, f in zip(wants, fixed, strict=True)]
        plan = []
        for b, (r, want) in enumerate(zip(self.rows, wants, strict=True)):
            if want > 0 and getattr(r.drafter, "shares", 0):  # layers:N: the target's keys for its layers
                r.drafter.borrow = lambda b=b, n=r.drafter.shares, d=r.drafter: ragged_cache.row_layers(
                    self.cache, self.mask, b, n, d.model.config)
            drafts, q = r.drafter.propose(r.tokens, want, r.sampling, r.gen) if want > 0 else ([], None)
            plan.append((drafts[:want], q))
        if shared:
            cap = pass_width([len(d) for d, _ in plan], acceptance, self.alpha, fixed, self.ragged, STEP_ROWS - 1)
            plan = [(d if f else d[:cap], q) for (d, q), f in zip(plan, fixed, strict=True)]
        # (drafts, q, parents of a tree's tokens or None for a chain, the chain's length)
        plan = [(d, q[: len(d)] if q is not None else None, None, len(d)) for d, q in plan]
        if self.trees and len(self.rows) == 1 and self.rows[0].fast and wants[0] > 0:
            # Batch 1, greedy: a few branches beside the chain (lookup_tree.py), in the positions the
            # kernels multiply together with the chain's anyway (draft_length.row_tile). In a batch a
            # row's extra positions are no longer nearly free, and chains are kept.
            r = self.rows[0]
            chain = plan[0][0]
            tokens, parents = r.drafter.propose_tree(r.tokens, chain, wants[0], self.tile - 1 - len(chain))
            plan = [(tokens, None, None if len(tokens) == len(chain) else parents, len(chain))]
        width = 1 + max(len(d) for d, *_ in plan)
        ids = torch.full((len(self.rows), width), self.pad_id, dtype=torch.long)  # (B, 1 + K)
        new = torch.zeros((len(self.rows), width), dtype=self.mask.dtype)
        for b, (r, (drafts, *_)) in enumerate(zip(self.rows, plan, strict=True)):
            ids[b, : 1 + len(drafts)] = torch.tensor([r.last, *drafts])
            new[b, : 1 + len(drafts)] = 1
        tree = _tree_mask(plan, width)
        self.mask = torch.cat([self.mask, new], 1)
        logits, hidden = forward_batch(self.model, ids, self.mask, self.cache, hidden=self.hidden,
                                       tree=tree)  # (B, 1 + K, V/H)
        best = logits.argmax(-1).tolist()  # (B, 1 + K)
        events, keep = [], []
        start = self.mask.shape[1] - width  # the pass's first column in the cache
        for b, (r, (drafts, q, parents, chain)) in enumerate(zip(self.rows, plan, strict=True)):
            m = r.metrics
            m.target_passes += 1
            depth = len(drafts)  # the longest run of drafts this pass could accept
            if parents is None:
                n_ok, nxt = r._pick(logits[b], best[b], drafts, q)
                accepted, chain_ok = drafts[:n_ok], n_ok
            else:  # a tree: the accepted branch's columns move up behind `last`, where a chain's are
                path, nxt = lookup_tree.accept(drafts, parents, best[b])
                n_ok, accepted = len(path), [drafts[i - 1] for i in path]
                depth = max(len(seen) for seen in lookup_tree.ancestors(parents)) - 1
                chain_ok = 0
                while chain_ok < min(n_ok, chain) and path[chain_ok] == chain_ok + 1:
                    chain_ok += 1
                if path != list(range(1, n_ok + 1)):
                    ragged_cache.move_columns(self.cache, b, start, path)
                if n_ok > chain_ok:
                    m.branch_accepted += n_ok - chain_ok
            keep.append(1 + n_ok)  # `last` and the accepted drafts stay in the cache
            if hidden is not None:
                r.drafter.observe(hidden[b, : 1 + n_ok])
            if drafts:
                m.drafted += len(drafts)  # every position verified, a tree's branches too
                m.accepted += n_ok
                while len(m.per_position) < depth:
                    m.per_position.append([0, 0])
                for i in range(depth):
                    m.per_position[i][1] += 1
                    m.per_position[i][0] += int(i < n_ok)
                if r.plan:  # the draft length follows the chain; branches are extras beside it
                    r.plan.update(chain, chain_ok)
            events.append((r, r._emit(accepted, nxt)))
        self.cache, self.mask = ragged_cache.crop(self.cache, self.mask, keep, width)
        self._drop_finished()
        return events

    def _drop_finished(self) -> None:
        for r in self.rows:
            if r.cancelled and r.finish_reason is None:
                r.finish_reason = "cancelled"
        live = [b for b, r in enumerate(self.rows) if r.finish_reason is None]
        if len(live) < len(self.rows):
            self.rows = [self.rows[b] for b in live]
            if not live:
                self.cache, self.mask = None, self.mask[:0, :0]
                return
            self.cache, self.mask = ragged_cache.select(self.cache, self.mask, live)
        # Columns no row attends to (rejected drafts, a departed row's long prompt) still cost attention.
        if self.mask.shape[1] > 32 and ragged_cache.holes(self.mask) > 0.25:
            self.cache, self.mask = ragged_cache.compact(self.cache, self.mask)


def _tree_mask(plan: list, width: int) -> torch.Tensor | None:
    """(B, W, W) bool, which positions of the pass each one sees, when a row verifies a tree; None
    when every row verifies a chain (causal). Padding positions see themselves only."""
    if all(parents is None for _, _, parents, _ in plan):
        return None
    tree = torch.eye(width, dtype=torch.bool).repeat(len(plan), 1, 1)  # (B, W, W)
    for b, (drafts, _, parents, _) in enumerate(plan):
        if parents is None:
            tree[b, : 1 + len(drafts), : 1 + len(drafts)] = torch.ones(1 + len(drafts), 1 + len(drafts)).tril().bool()
            continue
        for t, seen in enumerate(lookup_tree.ancestors(parents)):
            tree[b, t, seen] = True
    return tree


def decode(model, prompt: list[int], *, sampling: Sampling = GREEDY, max_new_tokens: int = 128,
           eos: set[int] | None = None, drafter=None, k: int = 4, adaptive: bool = True, seed: int | None = None,
           metrics: Metrics | None = None) -> Iterator[list[int]]:
    """Batch 1: yield the new tokens of each target pass; `metrics` (if given) is filled in as it goes."""
    request = Request(list(prompt), sampling, max_new_tokens, set(eos or ()), seed,
                      metrics if metrics is not None else Metrics())
    for events in decode_batch(model, [request], drafter=drafter, k=k, adaptive=adaptive):
        for _, tokens in events:
            yield tokens


def decode_batch(model, requests: list[Request], *, drafter=None, k: int = 4, adaptive: bool = True,
                 pad_id: int = 0) -> Iterator[list[tuple[Request, list[int]]]]:
    """Decode all `requests` together; yield, per target pass, (request, new tokens) for each row."""
    batch = Batch(model, drafter=drafter, k=k, adaptive=adaptive, pad_id=pad_id)
    yield batch.add(requests)
    while batch:
        yield batch.step()
