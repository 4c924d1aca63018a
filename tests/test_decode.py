"""The decoding engine's promises: plain greedy equals transformers' greedy; speculative greedy
equals plain greedy whatever the drafter (always right, always wrong, look-up, the target's own
layers, another model); speculative sampling has exactly the target's distribution."""

import pytest
import tiny
import torch

from spectune.decode.drafters import LookupDrafter, ModelDrafter, layers_drafter, make_drafter
from spectune.decode.engine import Metrics, decode
from spectune.decode.sampling import Sampling, distribution
from spectune.decode.speculative import verify
from spectune.errors import SpectuneError

PROMPT = [5, 9, 33, 70, 5, 9, 33, 12, 40, 7, 5, 9]


def sharp_llama(seed=0):
    """Untied head (varied continuations) scaled up (no near-ties between candidate tokens)."""
    m = tiny.tiny_llama(seed=seed, sharpen=1.0, tie_word_embeddings=False, num_hidden_layers=3)
    with torch.no_grad():
        m.lm_head.weight.mul_(30.0)
    return m


@pytest.fixture(scope="module")
def plain(target):
    return run(target, None)[0]


def run(model, drafter, n=40, **kw):
    m = Metrics()
    out = [t for chunk in decode(model, PROMPT, max_new_tokens=n, drafter=drafter, metrics=m, **kw) for t in chunk]
    return out, m


class Oracle:  # proposes exactly what the target will say
    def __init__(self, truth):
        self.truth = truth

    def propose(self, ctx, k, sampling, gen):
        i = len(ctx) - len(PROMPT)
        return self.truth[i:i + k], None


class Contrarian(Oracle):  # proposes a wrong token every time
    def propose(self, ctx, k, sampling, gen):
        right, _ = super().propose(ctx, k, sampling, gen)
        return [(t + 1) % 384 for t in right], None


def test_plain_greedy_equals_transformers(target, plain):
    hf = target.generate(torch.tensor([PROMPT]), max_new_tokens=40, do_sample=False, pad_token_id=0,
                         eos_token_id=None)[0, len(PROMPT):].tolist()
    assert plain == hf and len(set(plain)) > 10


def test_speculative_greedy_equals_plain_for_every_drafter(target, plain):
    for name, drafter in [("oracle", Oracle(plain)), ("contrarian", Contrarian(plain)), ("lookup", LookupDrafter()),
                          ("layers:1", layers_drafter(target, 1)), ("model", ModelDrafter(sharp_llama(seed=5)))]:
        out, m = run(target, drafter)
        assert out == plain, name
        assert m.new_tokens == 40
    _, m = run(target, Oracle(plain))
    assert m.acceptance == 1.0 and m.tau > 3 and m.target_passes < 12
    _, m = run(target, Contrarian(plain))
    assert m.accepted == 0 and m.tau == 1.0  # one target pass per token (the prefill gives the first)


def test_adaptive_draft_length_backs_off_a_useless_drafter(target, plain):
    _, m = run(target, Contrarian(plain), n=40)
    assert m.drafted < 20  # paused after repeated misses instead of drafting at every step
    _, fixed = run(target, Contrarian(plain), n=40, adaptive=False)
    assert fixed.drafted > m.drafted


def test_eos_inside_an_accepted_block_ends_there(target, plain):
    eos = plain[12]
    out, _ = run(target, Oracle(plain), eos={eos})
    assert out == plain[: plain.index(eos) + 1]


def test_layers_drafter_shares_the_targets_weights(target):
    d = layers_drafter(target, 2)
    assert d.model.lm_head.weight.data_ptr() == target.lm_head.weight.data_ptr()
    assert d.model.model.layers[0].mlp.up_proj.weight.data_ptr() == target.model.layers[0].mlp.up_proj.weight.data_ptr()
    assert target.config.num_hidden_layers == 3  # the target itself is untouched
    with pytest.raises(SpectuneError, match="expected 1 to 2"):
        layers_drafter(target, 3)
    with pytest.raises(SpectuneError, match="layers:N with N an integer"):
        make_drafter("layers:x", target)


def test_verify_keeps_the_target_distribution():
    """vLLM-style: over many draws, the first emitted token follows p, whatever q proposes."""
    torch.manual_seed(0)
    vocab, n = 6, 40000
    p_logits, q_logits = torch.randn(2, vocab), torch.randn(1, vocab) * 2
    s = Sampling(temperature=1.0)
    p = torch.stack([distribution(p_logits[i], None, s) for i in range(2)])  # (2, V): draft slot + bonus
    q = distribution(q_logits[0], None, s).unsqueeze(0)  # (1, V)
    gen = torch.Generator().manual_seed(1)
    counts = torch.zeros(vocab)
    drafts = torch.multinomial(q[0], n, replacement=True, generator=gen)
    for d in drafts.tolist():
        n_ok, nxt = verify(p, [d], q, gen)
        counts[d if n_ok == 1 else nxt] += 1
    empirical = counts / n
    assert (empirical - p[0]).abs().max() < 0.01, (empirical, p[0])
    # A deterministic drafter (q = one-hot) too:
    counts.zero_()
    for _ in range(n):
        n_ok, nxt = verify(p, [2], None, gen)
        counts[2 if n_ok == 1 else nxt] += 1
    assert ((counts / n) - p[0]).abs().max() < 0.01


def test_sampling_settings_shape_the_distribution():
    logits = torch.tensor([3.0, 2.0, 1.0, 0.0, -1.0])
    top2 = distribution(logits, None, Sampling(temperature=1.0, top_k=2))
    assert (top2[2:] == 0).all() and top2.sum() == pytest.approx(1.0)
    nucleus = distribution(logits, None, Sampling(temperature=1.0, top_p=0.7))
    assert (nucleus > 0).tolist() == [True, True, False, False, False]
    penalised = distribution(logits, torch.tensor([0]), Sampling(repetition_penalty=10.0))
    assert int(penalised.argmax()) == 1


def test_seeded_speculative_sampling_is_reproducible(target):
    s = Sampling(temperature=0.8, top_k=20)
    a, _ = run(target, layers_drafter(target, 1), sampling=s, seed=3)
    b, _ = run(target, layers_drafter(target, 1), sampling=s, seed=3)
    c, _ = run(target, layers_drafter(target, 1), sampling=s, seed=4)
    assert a == b and a != c


def test_greedy_with_a_repetition_penalty_matches_transformers(target):
    """The general verification path (distributions, not argmaxes) under a penalty that depends on
    the drafts before each position."""
    s = Sampling(repetition_penalty=1.3)
    hf = target.generate(torch.tensor([PROMPT]), max_new_tokens=30, do_sample=False, repetition_penalty=1.3,
                         pad_token_id=0, eos_token_id=None)[0, len(PROMPT):].tolist()
    plain, _ = run(target, None, n=30, sampling=s)
    assert plain == hf
    for drafter in (Oracle(plain), LookupDrafter(), layers_drafter(target, 1)):
        assert run(target, drafter, n=30, sampling=s)[0] == plain


def test_cost_aware_draft_length_weighs_acceptance_against_cost(target):
    from spectune.decode.draft_length import CostAwareK
    from spectune.decode.engine import Batch

    good = CostAwareK(cost=0.1)
    for _ in range(20):
        good.update(4, 4)  # always accepted
    assert good.next() >= 4
    poor = CostAwareK(cost=0.1)
    for _ in range(20):
        poor.update(2, 0)
    assert poor.next() == 0  # not worth drafting: pause
    assert [poor.next() for _ in range(poor.pause + 1)][-1] == 1  # then probe with one token
    costly = CostAwareK(cost=1.0)  # a draft token costs as much as a target pass
    for _ in range(20):
        costly.update(2, 1)
    assert costly.next() == 0
    # the cost is the draft's bytes read per token over the target's: 1 of 3 layers + the head
    cost = Batch(target, drafter=layers_drafter(target, 1)).draft_cost
    assert 0.3 < cost < 0.9
