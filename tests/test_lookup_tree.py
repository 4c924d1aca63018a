"""Tree drafts (decode/lookup_tree.py): which branches look-up offers, how a tree is verified, and the
invariants that keep it exact: a tree pass gives each position the logits a chain pass along its
branch gives (bit for bit in our kernel), and speculative output equals plain output when the
target takes a branch rather than the chain."""

import copy

import pytest
import torch
from test_decode import PROMPT, Contrarian, run, sharp_llama

from spectune import cpu_kernel
from spectune.decode import lean_llama, lookup_tree
from spectune.decode.drafters import LookupDrafter
from spectune.decode.engine import GREEDY, forward_batch
from spectune.decode.ragged_cache import left_pad
from spectune.quantize import quantize_int8


def test_look_up_offers_the_other_continuation_of_its_n_gram_as_a_branch():
    # "1 2" went on "3 4" twice, then "7 8" once (the most recent: the chain follows it).
    context = [1, 2, 3, 4, 9, 1, 2, 3, 4, 9, 1, 2, 7, 8, 9, 1, 2]
    chain, _ = LookupDrafter().propose(context, 4, GREEDY, None)
    assert chain == [7, 8, 9, 1]
    tokens, parents = LookupDrafter().propose_tree(context, chain, 4, room=2)
    assert tokens[:4] == chain and parents[:4] == [0, 1, 2, 3]
    # The branch: "3" beside the chain's first token (parent: the row's last token), then "4" after it.
    assert tokens[4:] == [3, 4] and parents[4:] == [0, 5]
    assert all(p <= i for i, p in enumerate(parents))  # parents before children: step.c's layout
    assert lookup_tree.ancestors(parents)[6] == [0, 5, 6]
    # No room (the chain fills the kernels' tile) or branches switched off: the chain alone.
    assert LookupDrafter().propose_tree(context, chain, 4, room=0) == (chain, [0, 1, 2, 3])
    assert LookupDrafter(branches=0).propose_tree(context, chain, 4, room=2) == (chain, [0, 1, 2, 3])
    # Continuations each seen once after a one-token match are too unlikely to offer; one that three
    # of seven occurrences share, after a long match, is offered even without a chain (and its sequel).
    assert lookup_tree.grow([5, 1, 5, 2, 5, 3, 5, 4, 5], [], 4) == ([], [])
    assert lookup_tree.grow([5, 1, 5, 2, 5, 3, 5, 4, 5, 6, 5, 6, 5, 6, 5], [], 4) == ([6, 5], [0, 1])


def reference_propose(context, k, max_ngram=5, min_ngram=2, two_token_drafts=4):
    """Look-up by scanning the whole context (what LookupDrafter did before its index)."""
    n_ctx = len(context)
    for n in range(min(max_ngram, n_ctx - 1), min_ngram - 1, -1):
        tail = context[n_ctx - n:]
        for start in range(n_ctx - n - 1, -1, -1):
            if context[start:start + n] == tail:
                follow = context[start + n:start + n + (min(k, two_token_drafts) if n <= 2 else k)]
                if follow:
                    return follow
    return []


@pytest.mark.parametrize("settings", [{}, {"max_ngram": 3, "min_ngram": 1}, {"max_ngram": 7}])
def test_the_indexed_look_up_drafts_what_a_scan_of_the_context_finds(settings):
    import random

    rng = random.Random(0)
    for trial in range(40):
        drafter = LookupDrafter(**settings)  # one row: its context grows, the index follows it
        context = [rng.randrange(6) for _ in range(rng.randrange(1, 12))]
        for _ in range(30):
            for k in (1, 3, 8):
                got, _ = drafter.propose(context, k, GREEDY, None)
                assert got == reference_propose(context, k, **settings), (trial, context, k)
            context += [rng.randrange(6) for _ in range(rng.randrange(1, 4))]  # extended in place
        # another list (another request) is indexed afresh
        other = [9, 1, 2, 9, 1]
        assert drafter.propose(other, 4, GREEDY, None)[0] == reference_propose(other, 4, **settings)


def test_a_tree_is_verified_along_the_branch_the_target_takes():
    tokens, parents = [7, 8, 3, 4], [0, 1, 0, 3]  # chain 7 8; branch 3 4 off the row's last token
    best_on_branch = [3, 0, 0, 4, 11]  # the target's argmax at pass positions 0..4
    assert lookup_tree.accept(tokens, parents, best_on_branch) == ([3, 4], 11)
    assert lookup_tree.accept(tokens, parents, [7, 8, 5, 0, 0]) == ([1, 2], 5)
    assert lookup_tree.accept(tokens, parents, [6, 0, 0, 0, 0]) == ([], 6)


def _tree_pass_and_chains(model, monkeypatch=None):
    """Logits of one tree pass (chain 7 8 9, branch 3 4 off the first token, branch 5 off the chain's
    first) and of chain passes along each branch, from the same cache."""
    from transformers import DynamicCache

    ids, mask = left_pad([PROMPT], 0)
    cache = DynamicCache(config=model.config)
    with torch.no_grad():
        forward_batch(model, ids, mask, cache)
        tokens, parents = [7, 8, 9, 3, 4, 5], [0, 1, 2, 0, 4, 1]
        seen = lookup_tree.ancestors(parents)
        tree = torch.zeros(1, 7, 7, dtype=torch.bool)
        for t, cols in enumerate(seen):
            tree[0, t, cols] = True
        fed = torch.tensor([[12, *tokens]])
        whole, _ = forward_batch(model, fed, torch.cat([mask, torch.ones_like(fed)], 1), copy.deepcopy(cache),
                                 tree=tree)
        branches = {}
        for t, cols in enumerate(seen):
            path = fed[:, cols]
            chain, _ = forward_batch(model, path, torch.cat([mask, torch.ones_like(path)], 1), copy.deepcopy(cache))
            branches[t] = chain[0, -1]
    return whole[0], branches


@pytest.mark.skipif(not cpu_kernel.available(), reason="no C compiler")
@pytest.mark.parametrize("weights", ["fp32", "bf16", "int8"])
def test_a_tree_pass_gives_each_position_its_branchs_chain_logits_bit_for_bit(weights):
    model = {"fp32": sharp_llama, "bf16": lambda: sharp_llama().to(torch.bfloat16),
             "int8": lambda: quantize_int8(sharp_llama())}[weights]()
    assert lean_llama.install(model)
    whole, branches = _tree_pass_and_chains(model)
    for t, logits in branches.items():
        assert torch.equal(whole[t], logits), t


def test_the_torch_path_masks_a_tree_too(monkeypatch):
    """Where the step kernel cannot run (long passes, no compiler), SDPA gets the tree in its mask."""
    model = sharp_llama()
    assert lean_llama.install(model)
    monkeypatch.setattr(lean_llama, "_step", lambda *a, **k: False)
    whole, branches = _tree_pass_and_chains(model)
    for t, logits in branches.items():
        torch.testing.assert_close(whole[t], logits, rtol=1e-5, atol=1e-5)


class BranchOracle(Contrarian):
    """A wrong chain, and the target's own next tokens as a branch beside it: every accepted token
    comes from a branch, so its keys must move in the cache for the text to stay right."""

    def propose_tree(self, context, chain, k, room):
        if room < 2 or k < 2:
            return chain, list(range(len(chain)))
        i = len(context) - len(PROMPT)
        right = self.truth[i:i + 2]
        return [*chain, *right], [*range(len(chain)), 0, len(chain) + 1][: len(chain) + len(right)]


@pytest.mark.parametrize("weights", ["fp32", "int8"])
def test_speculative_output_equals_plain_when_the_target_takes_a_branch(weights):
    model = sharp_llama() if weights == "fp32" else quantize_int8(sharp_llama())
    assert lean_llama.install(model)
    plain, _ = run(model, None)
    out, m = run(model, BranchOracle(plain), k=2, adaptive=False)  # a chain of 2 and room for 2 beside it
    assert out == plain
    assert m.branch_accepted > 20 and m.accepted == m.branch_accepted  # every accepted token off the chain
    # Look-up with its branches, at batch 1: the same text.
    assert run(model, LookupDrafter())[0] == plain
