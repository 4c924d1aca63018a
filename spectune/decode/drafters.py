"""Who proposes draft tokens. A drafter is any object with

    propose(context: list[int], k: int, sampling, generator) -> (tokens, q)

where q is (len(tokens), V) draft distributions, or None when the drafter is deterministic
(its q is one-hot), and, if it keeps per-sequence state, `fork()` -> a drafter for another row
of a batch. A drafter that reads the target's features (a draft head, draft_head.py) sets
`observes = True` and gets `observe(hidden)`: the target's final hidden states (n, H) of the n
positions the engine just kept in the target's cache, in order. The engine never looks inside: a
trained draft plugs in the same way.
"""

from __future__ import annotations

import copy

import torch

from ..errors import SpectuneError
from . import lean_llama, lookup_tree
from .sampling import Sampling, distribution, pick


class LookupDrafter:
    """Prompt look-up: continue the longest recent n-gram of the context that occurred before.

    A match of a single token is not used (min_ngram), and one of two tokens (or fewer, where
    min_ngram allows) drafts at most `two_token_drafts` tokens: a short match predicts the next
    tokens poorly, and a verification pass of k tokens costs more than a one-token step (fp32 about
    1.3x at k=4, int8 about 1.5x on this CPU). Chosen in a simulation over greedy outputs of the
    prompts bench/decode.py does not time (prompts 2-7 of each kind), with the measured pass costs:
    over the previous defaults (n-grams of 1 to 3, no cap) the mean speed-up rose about 4% in fp32,
    bf16 and int8 alike, summarization's and retrieval's more (code editing, where one-token matches
    pay, lost about 3% on the tuning prompts).

    Matches are found through an index of where each token occurred (lookup_tree.Occurrences), kept
    per row (`fork`) and extended as the row's context grows, not by scanning the whole context."""

    def __init__(self, max_ngram: int = 5, min_ngram: int = 2, two_token_drafts: int = 4,
                 branches: int = lookup_tree.EXTRA):
        self.max_ngram, self.min_ngram, self.two_token_drafts = max_ngram, min_ngram, two_token_drafts
        self.branches = branches  # tree drafts: at most this many positions beside the chain (0: chains only)
        self.occurrences = lookup_tree.Occurrences(max(max_ngram, lookup_tree.MAX_NGRAM))

    def fork(self) -> LookupDrafter:
        """A drafter for another row (its own index)."""
        return LookupDrafter(self.max_ngram, self.min_ngram, self.two_token_drafts, self.branches)

    def _matches(self, context: list[int]) -> list[tuple[int, int]]:
        """The context's earlier occurrences of its last token, most recent first: (continuation start,
        tail tokens matched, up to lookup_tree.MAX_NGRAM or max_ngram)."""
        return self.occurrences(context) if len(context) > 1 else []

    def propose(self, context: list[int], k: int, sampling: Sampling, generator) -> tuple[list[int], None]:
        # The most recent earlier occurrence of the longest n-gram ending the context (max_ngram at most).
        best, start = 0, None
        for s, n in self._matches(context):
            n = min(n, self.max_ngram)
            if n > best:
                best, start = n, s
        if start is None or best < self.min_ngram:
            return [], None
        return context[start:start + (min(k, self.two_token_drafts) if best <= 2 else k)], None

    def propose_tree(self, context: list[int], chain: list[int], k: int, room: int) -> tuple[list[int], list[int]]:
        """`chain` (this drafter's proposal) with the likeliest other continuations the context offers
        as branches, at most `room` positions of them: (tokens, parents), see lookup_tree.py. The engine
        asks at batch 1, greedy."""
        extra = min(room, self.branches)
        if extra <= 0 or len(context) < 2:
            return list(chain), list(range(len(chain)))
        return lookup_tree.grow(context, chain, k, extra, occurrences=self._matches(context))


class ModelDrafter:
    """A causal LM with the target's vocabulary, run autoregressively on its own KV cache."""

    costly = True  # each drafted token is a forward pass: the engine weighs it against acceptance

    def __init__(self, model, shares: int = 0):
        self.model = model.eval()
        self.cache = None
        self.cached: list[int] = []  # the tokens whose keys/values the cache holds
        # layers:N: the draft's layers are the target's first N, so their keys and values for every
        # token but the last are the target's own. After a pause (the draft length policy stops
        # drafting while drafts fail) the engine lends them (`borrow`, set before each propose)
        # instead of this drafter running its layers over everything it missed, which had made a
        # useless layers:8 draft cost int8 decoding 20-28%.
        self.shares, self.borrow = shares, None

    def fork(self) -> ModelDrafter:
        """A drafter for another row of a batch: the same weights, its own cache."""
        return ModelDrafter(self.model, self.shares)

    @torch.no_grad()
    def propose(self, context: list[int], k: int, sampling: Sampling, generator):
        from .engine import forward

        # Roll the cache back to the longest prefix it shares with the context, feed the rest.
        common = 0
        for a, b in zip(self.cached, context, strict=False):
            if a != b:
                break
            common += 1
        common = min(common, len(context) - 1)  # at least one token to feed, for fresh logits
        if self.borrow is not None and len(context) - 1 - common > 1:  # the target holds context[:-1]
            self.cache, self.cached, common = self.borrow(), list(context[:-1]), len(context) - 1
        if self.cache is not None and common < len(self.cached):
            self.cache.crop(common - len(self.cached))
        self.cached = self.cached[:common]
        logits, self.cache = forward(self.model, context[common:], self.cache, last_only=True)
        self.cached = list(context)
        tokens, qs = [], []
        seen = torch.tensor(context)
        for i in range(k):
            q = distribution(logits[-1], seen, sampling)  # (V,)
            t = pick(q, generator)
            tokens.append(t)
            qs.append(q)
            seen = torch.cat([seen, torch.tensor([t])])
            if i + 1 < k:
                logits, self.cache = forward(self.model, [t], self.cache)
                self.cached.append(t)
        return tokens, torch.stack(qs)


def layers_drafter(target, n: int) -> ModelDrafter:
    """Self-speculation: the target's first n layers, final norm and head, sharing its weights."""
    layers = getattr(getattr(target, "model", None), "layers", None)
    if layers is None or not hasattr(target.config, "num_hidden_layers"):
        raise SpectuneError(f"{type(target).__name__}: layers:N drafting needs a decoder with model.layers",
                            where="draft")
    if not 1 <= n < len(layers):
        raise SpectuneError(f"got layers:{n}, expected 1 to {len(layers) - 1} (the target has {len(layers)})",
                            where="draft")
    shallow = copy.copy(target)  # a new module object whose submodules are the target's own
    shallow._modules = dict(target._modules)
    inner = copy.copy(target.model)
    inner._modules = dict(target.model._modules)
    # A compiled target (--compile) keeps its compiled forward on this module: bound to the full-depth
    # original, so the copy drops it and runs its n layers eagerly, with the lean forward if the
    # target has it (lean_llama.py).
    inner.__dict__.pop("forward", None)
    inner.__dict__.pop("_spectune_compiled", None)
    lean_llama.rebind(target.model, inner)
    inner.config = copy.copy(target.model.config)
    inner.config.num_hidden_layers = n  # the decoder loop runs layers[:num_hidden_layers]
    shallow._modules["model"] = inner
    shallow.config = inner.config
    return ModelDrafter(shallow, shares=n)


def trained_draft(run_dir: str, target, target_spec: str | None):
    """A draft distilled by `spectune distill`, refused unless it was distilled for this target."""
    from ..run import check_draft, load_run

    if target_spec is not None:
        check_draft(run_dir, target_spec)
    info, _, draft = load_run(run_dir)
    if info.get("task_options", {}).get("kind") == "head":
        from ..draft_head import head_drafter

        return head_drafter(draft, target)
    if getattr(target.config, "spectune_quantized", None) == "int8":
        from ..quantize import quantize_int8

        draft = quantize_int8(draft)
    else:
        draft = draft.to(target.dtype)
    if lean_llama.installed(target):  # the target decodes with our forward: so does its draft
        lean_llama.install(draft)
    return ModelDrafter(draft)


def make_drafter(spec: str | None, target, target_spec: str | None = None):
    """`lookup`, `layers:N`, a draft run of `spectune distill` (checked against `target_spec`), or a
    model spec (alias, folder, .gguf, hub id) with the same vocabulary."""
    if not spec or spec == "none":
        return None
    from ..run import is_run, read_run

    if is_run(spec):
        if read_run(spec).get("task") != "draft":
            raise SpectuneError("is a fine-tuning run, not a draft; distil a draft with `spectune distill`",
                                where=str(spec))
        return trained_draft(spec, target, target_spec)
    if spec == "lookup":
        return LookupDrafter()
    if spec.startswith("layers:"):
        try:
            n = int(spec.split(":", 1)[1])
        except ValueError:
            raise SpectuneError(f"got {spec!r}, expected layers:N with N an integer", where="draft") from None
        return layers_drafter(target, n)
    from ..loading import load_model

    draft = load_model(spec, dtype="fp32").to(target.dtype)
    if draft.config.vocab_size != target.config.vocab_size:
        raise SpectuneError(f"draft '{spec}' has a vocabulary of {draft.config.vocab_size} tokens, the target "
                            f"{target.config.vocab_size}: a draft must share the target's tokenizer", where="draft")
    return ModelDrafter(draft)
