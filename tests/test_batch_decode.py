"""Batched decoding's promises: each row of a batch gets exactly what it gets alone (greedy and
seeded sampling, plain and speculative), whatever the other rows' lengths, drafts accepted, stop
conditions, arrivals and departures; the ragged cache after rejections is as if the rejected
tokens had never been seen."""

import pytest
import torch
from test_decode import sharp_llama

from spectune.decode import ragged_cache
from spectune.decode.drafters import LookupDrafter, ModelDrafter, layers_drafter
from spectune.decode.engine import Batch, Metrics, Request, decode, decode_batch, forward
from spectune.decode.sampling import Sampling

PROMPTS = [[5, 9, 33, 70, 5, 9, 33, 12],
           [17, 4, 4, 90, 21, 17, 4, 4, 90, 21, 8, 3, 17, 4, 4, 90, 21, 8, 3, 17],
           [101, 7],
           [60, 61, 62, 63, 64, 65, 66, 67, 68, 60, 61, 62]]


def solo(model, prompt, n=30, **kw):
    return [t for chunk in decode(model, prompt, max_new_tokens=n, **kw) for t in chunk]


@pytest.fixture(scope="module")
def alone(target):
    return [solo(target, p) for p in PROMPTS]


def batched(model, requests, **kw):
    out = {id(r): [] for r in requests}
    for events in decode_batch(model, requests, **kw):
        for r, tokens in events:
            out[id(r)] += tokens
    return [out[id(r)] for r in requests]


class Oracle:  # knows each prompt's true continuation
    def __init__(self, truths):
        self.truths = {tuple(p): t for p, t in zip(PROMPTS, truths, strict=True)}

    def propose(self, ctx, k, sampling, gen):
        for p, truth in self.truths.items():
            if tuple(ctx[: len(p)]) == p:
                done = len(ctx) - len(p)
                return truth[done:done + k], None
        return [], None


class Contrarian(Oracle):
    def propose(self, ctx, k, sampling, gen):
        right, _ = super().propose(ctx, k, sampling, gen)
        return [(t + 1) % 384 for t in right], None


class RightForTheFirst(Oracle):  # rows accept different numbers of drafts: holes in the cache
    def propose(self, ctx, k, sampling, gen):
        right, _ = super().propose(ctx, k, sampling, gen)
        return (right if tuple(ctx[: len(PROMPTS[0])]) == tuple(PROMPTS[0]) else [(t + 1) % 384 for t in right]), None


def test_plain_batch_rows_equal_their_solo_runs(target, alone):
    assert batched(target, [Request(p, max_new_tokens=30) for p in PROMPTS]) == alone


def test_speculative_batch_equals_plain_for_every_drafter(target, alone):
    for name, drafter in [("oracle", Oracle(alone)), ("contrarian", Contrarian(alone)),
                          ("mixed", RightForTheFirst(alone)), ("lookup", LookupDrafter()),
                          ("layers:1", layers_drafter(target, 1)), ("model", ModelDrafter(sharp_llama(seed=5)))]:
        requests = [Request(p, max_new_tokens=30) for p in PROMPTS]
        assert batched(target, requests, drafter=drafter) == alone, name
        assert all(r.metrics.new_tokens == 30 and r.finish_reason == "length" for r in requests)
    requests = [Request(p, max_new_tokens=30) for p in PROMPTS]
    batched(target, requests, drafter=Oracle(alone))
    assert all(r.metrics.acceptance == 1.0 and r.metrics.tau > 3 for r in requests)


def test_prompts_pass_alone_and_verification_passes_stay_within_the_kernels_rows(target, alone, monkeypatch):
    """An oracle keeps drafts flowing, so k grows; every pass must stay below STEP_ROWS rows (where
    our kernels compute each row as a one-token step does), whatever the batch size. Prompts are
    prefilled one at a time (their caches merged), not as one padded pass."""
    from spectune.decode import engine

    sizes = []
    real = engine.forward_batch
    monkeypatch.setattr(engine, "forward_batch",
                        lambda m, ids, *a, **kw: sizes.append(ids.shape) or real(m, ids, *a, **kw))
    for rows in (1, 4, 8):
        prompts = (PROMPTS * 2)[:rows]
        requests = [Request(p, max_new_tokens=30) for p in prompts]
        sizes.clear()
        batched(target, requests, drafter=Oracle(alone), k=12)
        assert sizes[:rows] == [(1, len(p)) for p in prompts]  # each prompt alone, no padding multiplied
        steps = sizes[rows:]
        assert max(b * t for b, t in steps) < engine.STEP_ROWS
        assert max(t for _, t in steps) == min(13, (engine.STEP_ROWS - 1) // rows)  # as long as allowed
        assert [r.metrics.new_tokens for r in requests] == [30] * rows


def test_rows_stop_on_their_own(target, alone):
    eos = alone[1][6]  # row 1 meets this token at its 7th step (other rows may meet it too)
    requests = [Request(p, max_new_tokens=n, eos={eos}) for p, n in zip(PROMPTS, (30, 30, 5, 12), strict=True)]
    outs = batched(target, requests, drafter=Oracle(alone))
    for out, a, r, n in zip(outs, alone, requests, (30, 30, 5, 12), strict=True):
        cut = a.index(eos) + 1 if eos in a[:n] else n
        assert out == a[:cut]
        assert r.finish_reason == ("stop" if eos in a[:n] else "length")
    assert requests[1].finish_reason == "stop" and len(outs[1]) <= 7


def test_requests_joining_and_leaving_a_running_batch(target, alone, monkeypatch):
    """Continuous batching: a request added mid-way, one cancelled, one short; the long-prompt row leaves
    early so the cache is compacted; every surviving row still gets its solo output."""
    compactions = []
    real = ragged_cache.compact
    monkeypatch.setattr(ragged_cache, "compact", lambda *a: compactions.append(1) or real(*a))
    batch = Batch(target, drafter=LookupDrafter())
    first = [Request(PROMPTS[0], max_new_tokens=30), Request(PROMPTS[1], max_new_tokens=3),
             Request(PROMPTS[2], max_new_tokens=30)]
    out = {id(r): [] for r in first}
    events = batch.add(first)
    late = Request(PROMPTS[3], max_new_tokens=30)
    out[id(late)] = []
    for step in range(100):
        for r, tokens in events:
            out[id(r)] += tokens
        if not batch:
            break
        if step == 3:
            events = batch.add([late])
            first[2].cancelled = True
            continue
        events = batch.step()
    assert out[id(first[0])] == alone[0]
    assert out[id(first[1])] == alone[1][:3]
    assert first[2].finish_reason == "cancelled" and out[id(first[2])] == alone[2][: len(out[id(first[2])])]
    assert out[id(late)] == alone[3]
    assert compactions


def test_cache_after_rejections_is_as_if_they_were_never_seen(target, alone):
    batch = Batch(target, drafter=RightForTheFirst(alone), adaptive=False)
    requests = [Request(p, max_new_tokens=30) for p in PROMPTS]
    batch.add(requests)
    for _ in range(4):
        batch.step()
    m = batch.mask
    assert (m[:, 1:] < m[:, :-1]).any()  # a row's rejected drafts left masked columns after its own
    probe = torch.tensor([[r.last] for r in batch.rows])
    mask = torch.cat([batch.mask, torch.ones((len(batch), 1), dtype=batch.mask.dtype)], 1)
    from spectune.decode.engine import forward_batch
    got = forward_batch(target, probe, mask, batch.cache)[0][:, -1]  # (B, V)
    for b, r in enumerate(batch.rows):
        fresh, _ = forward(target, r.tokens, None)  # the row's whole context, never a rejected token
        torch.testing.assert_close(got[b], fresh[-1], atol=1e-4, rtol=1e-4)


def test_seeded_sampling_in_a_batch_equals_alone(target):
    s = Sampling(temperature=0.8, top_p=0.9)
    for drafter in (None, LookupDrafter()):
        want = [solo(target, p, sampling=s, seed=10 + i, drafter=drafter) for i, p in enumerate(PROMPTS)]
        got = batched(target, [Request(p, sampling=s, seed=10 + i, max_new_tokens=30) for i, p in enumerate(PROMPTS)],
                      drafter=drafter)
        assert got == want


def test_compact_keeps_each_rows_columns_in_order():
    from transformers import DynamicCache

    cache = DynamicCache()
    keys = torch.arange(2 * 1 * 5 * 2, dtype=torch.float).view(2, 1, 5, 2)  # (B, H, T, D)
    cache.update(keys, keys + 100, 0)
    mask = torch.tensor([[0, 1, 0, 1, 1], [1, 1, 0, 0, 1]])
    cache, new = ragged_cache.compact(cache, mask)
    assert new.tolist() == [[1, 1, 1], [1, 1, 1]]
    assert cache.layers[0].keys[0, 0, :, 0].tolist() == keys[0, 0, [1, 3, 4], 0].tolist()
    assert cache.layers[0].values[1, 0, :, 0].tolist() == (keys[1, 0, [0, 1, 4], 0] + 100).tolist()
    assert Metrics().tau == 0.0


def test_batch_width_is_chosen_for_the_whole_pass():
    from spectune.decode.draft_length import pass_width, row_cost

    fp32 = row_cost(4)
    # batch 1: drafts that are usually accepted are worth a longer pass
    assert pass_width([6], [0.8], fp32) >= 3
    # batch 4: one row's drafts would pad all four rows; at acceptance 0.5 that never pays
    assert pass_width([6, 0, 0, 0], [0.5, 0.5, 0.5, 0.5], fp32) == 0
    # ... but four rows that all draft well do
    assert pass_width([6, 6, 6, 6], [0.9] * 4, fp32) >= 2
    # a sampled row keeps its drafts: the width is at least theirs, the greedy rows fill it for free
    assert pass_width([6, 0, 0, 0], [0.5] * 4, fp32, fixed=[False, False, True, False]) == 0
    assert pass_width([0, 3, 5, 0], [0.1] * 4, fp32, fixed=[False, False, True, False]) == 5
    # narrower weights make each extra row dearer (the products stop hiding behind weight reads)
    assert row_cost(4) < row_cost(2) < row_cost(1)
    # bf16 pairs (AVX512_BF16) make extra rows cheaper: bf16 costs what fp32 does per row
    assert row_cost(2, bf16_pairs=True) == row_cost(4) < row_cost(1, bf16_pairs=True) < row_cost(1)


def test_one_rows_drafts_cost_only_their_own_rows_on_our_forward(target, alone):
    """A right-every-time drafter for one row only: on our forward, which computes only the positions
    fed, that row drafts (its drafts cost only their own rows); with transformers' forward, which pads
    every row to the longest, it does not at batch 4 (the padding would cost more than its drafts
    win). Every text stays its own either way."""
    from spectune.decode import lean_llama

    class OnlyFirst(Oracle):
        def propose(self, ctx, k, sampling, gen):
            right, _ = super().propose(ctx, k, sampling, gen)
            return (right if tuple(ctx[: len(PROMPTS[0])]) == tuple(PROMPTS[0]) else []), None

    requests = [Request(p, max_new_tokens=30) for p in PROMPTS]
    batch = Batch(target, drafter=OnlyFirst(alone), pad_id=0)
    got = {id(r): [] for r in requests}
    widths = []
    for r, tokens in batch.add(requests):
        got[id(r)] += tokens
    while batch:
        before, rows = batch.mask.shape[1], len(batch)
        for r, tokens in batch.step():
            got[id(r)] += tokens
        widths.append((rows, batch.mask.shape[1] - before))
    assert [got[id(r)] for r in requests] == alone
    if lean_llama.installed(target):
        assert requests[0].metrics.accepted >= 15 and requests[0].metrics.target_passes <= 12  # of 30 plain
        assert any(w > 4 for rows, w in widths if rows == 4)
    else:
        assert all(w <= 1 for rows, w in widths if rows == 4)  # (a compaction shrinks the mask)


def test_a_layers_draft_borrows_the_targets_keys_after_a_pause(target, alone):
    """layers:N shares the target's first N layers, so after a pause it takes their keys and values
    from the target's cache instead of running its layers over every token it missed (the prompt
    included): it is never fed more than the last token, in a batch or alone, and every text stays
    the plain one."""
    drafter = layers_drafter(target, 1)
    fed = []
    inner = drafter.model.forward
    drafter.model.forward = lambda *a, **kw: fed.append(kw["input_ids"].shape[1]) or inner(*a, **kw)
    assert batched(target, [Request(p, max_new_tokens=30) for p in PROMPTS], drafter=drafter) == alone
    assert [solo(target, p, drafter=drafter) for p in PROMPTS] == alone
    assert fed and max(fed) == 1  # the prompt and the missed tokens came from the target's cache
