"""`--compile`: a compiled target decodes what the eager one does (fp32, greedy), speculation on it is
still lossless, and decoding does not keep recompiling (each new cache stride or length would be a
graph of minutes on the real model)."""

import pytest
import torch
import torch._dynamo.utils as dynamo_utils
from test_batch_decode import PROMPTS, Oracle, batched
from test_decode import sharp_llama

from spectune.decode.compiled import compile_model, warm_up
from spectune.decode.drafters import LookupDrafter, layers_drafter
from spectune.decode.engine import Request
from spectune.decode.sampling import Sampling


def requests(n=30, **kw):
    return [Request(list(p), max_new_tokens=n, **kw) for p in PROMPTS]


@pytest.fixture(scope="module")
def compiled():
    torch._dynamo.reset()
    model = sharp_llama()
    eager = {"batch": batched(model, requests()), "solo": [batched(model, [r])[0] for r in requests()]}
    sampled = batched(model, requests(sampling=Sampling(temperature=1.0), seed=5))
    draft = layers_drafter(model, 1)  # made before compiling, as Generator does
    compile_model(model)
    dynamo_utils.counters.clear()
    warm_up(model, batched=True, quiet=True)
    # Dynamo specialises sizes 1: a step of one token and of several, at batch 1 and 2, are 4 graphs.
    # More means a guard that changes while decoding (a strided, cropped cache: 8).
    assert graphs() <= 4
    return model, draft, eager, sampled


def graphs() -> int:
    return dynamo_utils.counters["stats"]["unique_graphs"]


def test_compiled_greedy_equals_eager_in_batches_and_alone(compiled):
    model, _, eager, _ = compiled
    before = graphs()
    assert batched(model, requests()) == eager["batch"]
    assert [batched(model, [r])[0] for r in requests()] == eager["solo"]
    # The warm-up compiled a batch of 1 and of 2; a batch of 4 may add one graph, not one per step.
    assert graphs() - before <= 2


def test_speculation_on_a_compiled_target_is_lossless(compiled):
    model, draft, eager, _ = compiled
    before = graphs()
    for drafter in (LookupDrafter(), draft, Oracle(eager["batch"])):
        assert batched(model, requests(), drafter=drafter) == eager["batch"]
        assert [batched(model, [r], drafter=drafter)[0] for r in requests()] == eager["solo"]
    # Rejections crop the cache to strided views: handed over contiguous, they cause no recompiles.
    assert graphs() - before <= 2


def test_seeded_sampling_is_unchanged_by_compiling(compiled):
    model, _, _, sampled = compiled
    assert batched(model, requests(sampling=Sampling(temperature=1.0), seed=5)) == sampled


def test_layers_draft_of_a_compiled_target_runs_its_own_layers_eagerly(compiled):
    model, draft, _, _ = compiled
    assert "forward" in model.model.__dict__  # the compiled wrapper
    assert "forward" not in draft.model.model.__dict__
    assert draft.model.model.config.num_hidden_layers == 1
    late = layers_drafter(model, 1)  # made after compiling: the copy drops the wrapper too
    assert "forward" not in late.model.model.__dict__
    ids = torch.tensor([PROMPTS[0]])
    with torch.no_grad():
        assert torch.equal(draft.model(ids).logits, late.model(ids).logits)


def test_a_failing_compiler_is_one_line_naming_the_option(monkeypatch):
    from spectune.decode import compiled as module
    from spectune.errors import SpectuneError

    def broken(fn, **_):
        def run(*a, **k):
            raise RuntimeError("InductorError: C++ compile error\n(long log)")
        return run

    monkeypatch.setattr(module.torch, "compile", broken)
    model = compile_model(sharp_llama())
    with pytest.raises(SpectuneError, match=r"torch.compile failed \(RuntimeError: InductorError: C\+\+ compile "
                                            r"error\); run without --compile") as err:
        warm_up(model, quiet=True)
    assert err.value.where == "compile"
