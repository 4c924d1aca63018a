"""The lean decoding forward (lean_llama.py) and the int8 kernel (cpu_kernel.py): the same numbers
as transformers' forward and as a dequantized product, and the properties speculation relies on."""

import pytest
import tiny
import torch
from test_batch_decode import PROMPTS
from test_decode import PROMPT, sharp_llama

from spectune import cpu_kernel
from spectune.decode import lean_llama
from spectune.decode.drafters import LookupDrafter, layers_drafter
from spectune.decode.engine import decode, decode_batch, forward_batch
from spectune.decode.ragged_cache import left_pad
from spectune.quantize import Int8Linear, quantize_int8


def test_lean_forward_gives_transformers_logits_prefill_cached_and_ragged():
    from transformers import DynamicCache

    hf, lean = sharp_llama(), sharp_llama()
    assert lean_llama.install(lean) and not lean_llama.install(lean)  # once
    ids, mask = left_pad(PROMPTS, 0)
    with torch.no_grad():
        caches = [DynamicCache(config=hf.config), DynamicCache(config=hf.config)]
        a, _ = forward_batch(hf, ids, mask, caches[0])
        b, _ = forward_batch(lean, ids, mask, caches[1])
        rows = mask.bool()  # padding positions' logits are never read
        torch.testing.assert_close(b[rows], a[rows], atol=1e-5, rtol=1e-5)
        step = torch.tensor([[3, 4, 5]] * len(PROMPTS))  # a verification pass of three tokens per row
        mask = torch.cat([mask, torch.ones(len(PROMPTS), 3, dtype=mask.dtype)], 1)
        for _ in range(2):  # the second pass appends into the spare columns of the first
            a, _ = forward_batch(hf, step, mask, caches[0])
            b, _ = forward_batch(lean, step, mask, caches[1])
            torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-5)
            mask = torch.cat([mask, torch.ones(len(PROMPTS), 3, dtype=mask.dtype)], 1)
        for la, lb in zip(caches[0].layers, caches[1].layers, strict=True):
            torch.testing.assert_close(lb.keys, la.keys, atol=1e-5, rtol=1e-5)


def test_lean_step_attention_over_a_long_cache_gives_transformers_logits():
    from transformers import DynamicCache

    hf, lean = sharp_llama(), sharp_llama()
    lean_llama.install(lean)
    prompt = torch.tensor([[(5 * i) % 120 + 1 for i in range(70)]])  # 4 blocks of 16 columns and a tail
    caches = [DynamicCache(config=hf.config), DynamicCache(config=hf.config)]
    with torch.no_grad():
        hf(prompt, cache=caches[0])
        lean(prompt, cache=caches[1])
        for step in ([[3, 4, 5, 6, 7]], [[8]], [[9, 10, 11]]):
            a = hf(torch.tensor(step), cache=caches[0]).logits
            b = lean(torch.tensor(step), cache=caches[1]).logits
            torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-5)


def test_lean_forward_leaves_weights_unduplicated_and_drafts_at_depth():
    def stored(m):  # bytes of the distinct storages behind the parameters
        return sum({p.untyped_storage().data_ptr(): p.untyped_storage().nbytes() for p in m.parameters()}.values())

    model = sharp_llama()
    before = stored(model)
    lean_llama.install(model)
    attn = model.model.layers[0].self_attn
    assert stored(model) == before  # the fused weights replace the separate ones, nothing is kept twice
    # q, k, v are views of the fused weight: one storage, read by one product
    fused_qkv = model.model.__dict__["_lean_plan"][0][1][1]  # what the forward multiplies by
    storage = fused_qkv.untyped_storage().data_ptr()
    assert attn.q_proj.weight.untyped_storage().data_ptr() == storage == attn.v_proj.weight.untyped_storage().data_ptr()
    plain = [t for c in decode(model, PROMPT, max_new_tokens=20) for t in c]
    draft = layers_drafter(model, 1)
    assert draft.model.model.forward.__func__ is lean_llama._forward
    assert [t for c in decode(model, PROMPT, max_new_tokens=20, drafter=draft) for t in c] == plain


def test_models_outside_the_lean_layout_keep_their_forward():
    model = tiny.tiny_llama(attention_bias=True)
    assert not lean_llama.supported(model) and not lean_llama.install(model)
    assert "forward" not in model.model.__dict__


@pytest.mark.skipif(not cpu_kernel.available(), reason="no C compiler")
@pytest.mark.parametrize("width", [64, 72, 40, 200])
def test_cpu_kernel_matches_the_dequantized_product_and_is_row_independent(width):
    torch.manual_seed(width)
    w = torch.randint(-127, 128, (37, width), dtype=torch.int8)
    scale = torch.rand(37) / 100
    x = torch.randn(9, width)
    rounded = x.bfloat16() if cpu_kernel.bf16_pairs() else x  # bf16 pairs: activations rounded to bf16
    want = rounded.double() @ (w.double() * scale.double()[:, None]).T
    got = cpu_kernel.linear(x, w, scale)
    torch.testing.assert_close(got.double(), want, atol=1e-5, rtol=1e-5)
    # any row, computed in a pass of any size, is the same bits: verification == one-token steps
    for rows in range(1, 9):
        assert torch.equal(cpu_kernel.linear(x[:rows], w, scale), got[:rows])
    assert torch.equal(cpu_kernel.linear(x[5:6], w, scale), got[5:6])


@pytest.mark.skipif(not cpu_kernel.available(), reason="no C compiler")
@pytest.mark.parametrize("weights", ["int8", "fp32", "bf16"])
def test_products_match_torch_and_do_not_depend_on_pass_size_or_thread(weights):
    torch.manual_seed(1)
    n_in, n_out, rows = 72, 37, 9
    if weights == "int8":
        w, scale = torch.randint(-127, 128, (n_out, n_in), dtype=torch.int8), torch.rand(n_out) / 100
        dense = w.float() * scale[:, None]
    else:
        w, scale = torch.randn(n_out, n_in).to(torch.float32 if weights == "fp32" else torch.bfloat16), None
        dense = w.float()
    x = torch.randn(rows, n_in)
    got = cpu_kernel.linear(x, w, scale)
    assert got.dtype == torch.float32 and got.shape == (rows, n_out)
    # bf16 pairs (AVX512_BF16): bf16 and int8 weights multiply the activations rounded to bf16
    rounded = x.bfloat16().float() if weights != "fp32" and cpu_kernel.bf16_pairs() else x
    torch.testing.assert_close(got, rounded @ dense.T, atol=1e-4, rtol=1e-4)
    for n in (1, 2, 5):  # a one-token step and short verification passes: the same bits
        assert torch.equal(cpu_kernel.linear(x[:n], w, scale), got[:n]), n
    threads = torch.get_num_threads()
    try:  # and whichever thread computes an output
        torch.set_num_threads(1)
        assert torch.equal(cpu_kernel.linear(x, w, scale), got)
    finally:
        torch.set_num_threads(threads)


@pytest.mark.skipif(not cpu_kernel.available(), reason="no C compiler")
@pytest.mark.parametrize("weights", ["int8", "bf16"])
def test_lean_speculation_equals_plain_in_a_ragged_batch(weights):
    if weights == "int8":
        model = quantize_int8(sharp_llama())
        assert next(model.parameters()).dtype == torch.float32  # fp32 around the int8 products
    else:
        model = sharp_llama().to(torch.bfloat16)  # bf16 weights, fp32 attention and cache
    assert lean_llama.install(model)
    from spectune.decode.engine import Request

    def batched(drafter):
        requests = [Request(p, max_new_tokens=24) for p in PROMPTS]
        out = {id(r): [] for r in requests}
        for events in decode_batch(model, requests, drafter=drafter):
            for r, tokens in events:
                out[id(r)] += tokens
        return [out[id(r)] for r in requests]

    alone = [[t for c in decode(model, p, max_new_tokens=24) for t in c] for p in PROMPTS]
    assert batched(None) == alone
    assert batched(LookupDrafter()) == alone
    assert batched(layers_drafter(model, 1)) == alone


@pytest.mark.skipif(not cpu_kernel.available(), reason="no C compiler")
@pytest.mark.parametrize("weights", ["fp32", "bf16", "int8"])
def test_a_step_is_one_kernel_call_and_a_pass_of_k_tokens_gives_k_steps_logits_bit_for_bit(weights, monkeypatch):
    import copy

    from transformers import DynamicCache

    model = {"fp32": sharp_llama, "bf16": lambda: sharp_llama().to(torch.bfloat16),
             "int8": lambda: quantize_int8(sharp_llama())}[weights]()
    assert lean_llama.install(model)
    calls = []
    real = cpu_kernel.decode_layers
    monkeypatch.setattr(cpu_kernel, "decode_layers", lambda *a: calls.append(a[2].shape) or real(*a))
    # A ragged batch (the step's column mask in play) with a row long enough that the four queries
    # of the pass straddle attention's 16-column blocks.
    prompts = [*PROMPTS, [(7 * i) % 97 + 1 for i in range(45)]]
    ids, mask = left_pad(prompts, 0)
    cache = DynamicCache(config=model.config)
    with torch.no_grad():
        forward_batch(model, ids, mask, cache)  # the prompt: torch's products, not the step kernel
        assert not calls
        other = copy.deepcopy(cache)
        fed = torch.tensor([[7, 8, 9, 10]] * len(prompts))
        whole, _ = forward_batch(model, fed, torch.cat([mask, torch.ones_like(fed)], 1), cache)  # (B, 4, V)
        assert calls == [(len(prompts) * 4, model.config.hidden_size)]  # all layers in one call
        for t in range(4):
            mask = torch.cat([mask, torch.ones(len(prompts), 1, dtype=mask.dtype)], 1)
            one, _ = forward_batch(model, fed[:, t:t + 1], mask, other)
            assert torch.equal(one[:, 0], whole[:, t])  # bit for bit: what makes speculation exact
    for la, lb in zip(cache.layers, other.layers, strict=True):
        assert torch.equal(la.keys, lb.keys) and torch.equal(la.values, lb.values)


@pytest.mark.skipif(not cpu_kernel.available(), reason="no C compiler")
@pytest.mark.parametrize("weights", ["fp32", "int8"])
def test_a_ragged_pass_computes_only_the_positions_fed_with_one_token_steps_bits(weights, monkeypatch):
    """Rows verifying 4, 1, 3 and 2 tokens, padded to 4: the kernel gets only the 10 positions fed (one
    call), each with the logits of one-token steps bit for bit; padding columns hold zero keys and
    values (masked); and a pass of 8 rows x 5 = 40 positions with fewer than 32 fed is a kernel step."""
    import copy

    from transformers import DynamicCache

    model = {"fp32": sharp_llama, "int8": lambda: quantize_int8(sharp_llama())}[weights]()
    assert lean_llama.install(model)
    calls = []
    real = cpu_kernel.decode_layers
    monkeypatch.setattr(cpu_kernel, "decode_layers", lambda *a: calls.append(a[2].shape) or real(*a))
    ids, mask = left_pad(PROMPTS, 0)
    cache = DynamicCache(config=model.config)
    with torch.no_grad():
        forward_batch(model, ids, mask, cache)
        other = copy.deepcopy(cache)
        lengths = [4, 1, 3, 2]
        fed = torch.tensor([[7, 8, 9, 10]] * len(PROMPTS))
        own = torch.tensor([[int(t < n) for t in range(4)] for n in lengths])  # (B, 4)
        calls.clear()
        whole, _ = forward_batch(model, fed, torch.cat([mask, own], 1), cache)  # (B, 4, V)
        assert calls == [(sum(lengths), model.config.hidden_size)]
        past = mask.shape[1]
        for t in range(4):
            step_mask = torch.cat([mask, own[:, : t + 1]], 1)
            one, _ = forward_batch(model, fed[:, t:t + 1], step_mask, other)
            for b, n in enumerate(lengths):
                if t < n:
                    assert torch.equal(one[b, 0], whole[b, t])
    for la, lb in zip(cache.layers, other.layers, strict=True):
        for b, n in enumerate(lengths):
            assert torch.equal(la.keys[b, :, : past + n], lb.keys[b, :, : past + n])
            assert not la.keys[b, :, past + n:].any() and not la.values[b, :, past + n:].any()
    # 8 rows, one verifying 4 drafts and the others none: 40 positions, 12 fed, one kernel step
    rows = [*PROMPTS, *PROMPTS]
    ids, mask = left_pad(rows, 0)
    cache = DynamicCache(config=model.config)
    with torch.no_grad():
        forward_batch(model, ids, mask, cache)
        calls.clear()
        own = torch.zeros(8, 5, dtype=mask.dtype)
        own[:, 0], own[0] = 1, 1
        forward_batch(model, torch.full((8, 5), 7), torch.cat([mask, own], 1), cache)
    assert calls == [(12, model.config.hidden_size)]


@pytest.mark.skipif(not cpu_kernel.available(), reason="no C compiler")
def test_a_copied_model_steps_with_its_own_weights():
    import copy

    model = sharp_llama()
    lean_llama.install(model)
    twin = copy.deepcopy(model)
    plain = [t for c in decode(model, PROMPT, max_new_tokens=16) for t in c]
    with torch.no_grad():  # the original changed after the copy: the copy must not read it
        for p in model.parameters():
            p.zero_()
    assert [t for c in decode(twin, PROMPT, max_new_tokens=16) for t in c] == plain
    pointers = twin.model.__dict__["_lean_step"].weights
    assert pointers[0] == twin.model.__dict__["_lean_plan"][0][1][1].data_ptr()


def test_without_the_kernels_int8_falls_back_to_torch_in_bf16_and_our_forward_to_torch_ops(monkeypatch):
    monkeypatch.setattr(cpu_kernel, "available", lambda: False)
    model = quantize_int8(sharp_llama())
    assert isinstance(model.lm_head, Int8Linear) and model.lm_head.act_dtype == torch.bfloat16
    plain = [t for c in decode(model, PROMPT, max_new_tokens=12) for t in c]
    assert len(plain) == 12
    # our forward without the kernels: torch's operations, the same tokens as transformers' forward
    fp, lean = sharp_llama(), sharp_llama()
    assert lean_llama.install(lean)
    want = [t for c in decode(fp, PROMPT, max_new_tokens=20) for t in c]
    assert [t for c in decode(lean, PROMPT, max_new_tokens=20) for t in c] == want
    assert [t for c in decode(lean, PROMPT, max_new_tokens=20, drafter=LookupDrafter()) for t in c] == want


@pytest.mark.skipif(not cpu_kernel.available(), reason="no C compiler")
def test_int8_product_inside_torch_compile_is_the_custom_op_with_the_same_result():
    torch.manual_seed(3)
    w, scale = torch.randint(-127, 128, (24, 40), dtype=torch.int8), torch.rand(24) / 100
    x = torch.randn(3, 40)
    compiled = torch.compile(lambda a: torch.relu(cpu_kernel.linear(a, w, scale)) + 1, fullgraph=True)
    torch.testing.assert_close(compiled(x), torch.relu(cpu_kernel.linear(x, w, scale)) + 1)


def test_huge_pages_advice_leaves_values_and_small_tensors_alone():
    big, small = torch.randn(3 << 20), torch.randn(1000)  # 12 MB and 4 KB
    before = big.clone(), small.clone()
    done = cpu_kernel.huge_pages([big, big[5:], small])  # the same storage twice counts once
    assert done % (2 << 20) == 0 and done <= big.numel() * 4
    assert torch.equal(big, before[0]) and torch.equal(small, before[1])


@pytest.mark.skipif(not cpu_kernel.available(), reason="no C compiler")
def test_int8_prompts_on_bf16_matrix_units_stay_close_and_speculation_stays_exact(monkeypatch):
    from transformers import DynamicCache

    model = quantize_int8(sharp_llama())
    lean_llama.install(model)
    prompt = [(11 * i) % 150 + 1 for i in range(40)]  # 40 rows: a prompt pass, not a step
    logits = {}
    for bf16 in (False, True):
        monkeypatch.setattr(cpu_kernel, "_BF16_MATMUL", bf16)
        with torch.no_grad():
            logits[bf16] = model(torch.tensor([prompt]), cache=DynamicCache(config=model.config)).logits
    torch.testing.assert_close(logits[True], logits[False], atol=0.05 * logits[False].abs().max().item(), rtol=0)
    plain = [t for c in decode(model, prompt, max_new_tokens=24) for t in c]
    assert [t for c in decode(model, prompt, max_new_tokens=24, drafter=LookupDrafter()) for t in c] == plain
    assert [t for c in decode(model, prompt, max_new_tokens=24, drafter=layers_drafter(model, 1)) for t in c] == plain


def test_kernels_are_not_used_on_a_cpu_without_avx512(monkeypatch, capsys):
    monkeypatch.setattr(cpu_kernel, "_LIB", None)
    monkeypatch.setattr(cpu_kernel, "_FAILED", None)
    monkeypatch.setattr(cpu_kernel, "_cpu_flags", lambda: "flags : fpu sse2 avx avx2 fma")
    assert not cpu_kernel.available()
    assert "no AVX-512" in capsys.readouterr().err


@pytest.mark.skipif(not cpu_kernel.available(), reason="no C compiler")
def test_a_short_first_pass_into_an_empty_cache_is_one_step_call_too(monkeypatch):
    from transformers import DynamicCache

    hf, lean = sharp_llama(), sharp_llama()
    lean_llama.install(lean)
    calls = []
    real = cpu_kernel.decode_layers
    monkeypatch.setattr(cpu_kernel, "decode_layers", lambda *a: calls.append(a[2].shape) or real(*a))
    caches = [DynamicCache(config=hf.config), DynamicCache(config=hf.config)]
    with torch.no_grad():
        for fed in ([PROMPT], [[3, 4]]):  # 12 tokens into an empty cache, then a step
            a = hf(torch.tensor(fed), cache=caches[0]).logits
            b = lean(torch.tensor(fed), cache=caches[1]).logits
            torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-5)
    assert len(calls) == 2
    torch.testing.assert_close(caches[1].layers[0].keys, caches[0].layers[0].keys, atol=1e-5, rtol=1e-5)


@pytest.mark.skipif(not cpu_kernel.available(), reason="no C compiler")
@pytest.mark.parametrize("weights", ["fp32", "bf16", "int8"])
def test_a_row_in_a_left_padded_batch_gets_the_logits_it_gets_alone_bit_for_bit(weights, monkeypatch):
    """A short row beside a long one sits behind 38 padding columns (not a multiple of attention's
    16-column blocks) and, once a row finishes, in a narrowed batch: every step's logits must be the
    bits it gets alone, or bf16 and int8 products (which round activations to bf16) amplify a last-bit
    difference into another token. Head dim 32, so attention's 16-key blocks and its tail both run."""
    from spectune.decode import engine

    def model():
        m = tiny.tiny_llama(seed=3, sharpen=1.0, hidden_size=64, intermediate_size=128, num_attention_heads=2,
                            num_key_value_heads=1, tie_word_embeddings=False)
        m = quantize_int8(m) if weights == "int8" else m.to(torch.bfloat16) if weights == "bf16" else m
        assert lean_llama.install(m)
        return m

    target = model()
    seen = {}
    real = engine.Request._pick
    monkeypatch.setattr(engine.Request, "_pick", lambda self, logits, *a: seen.setdefault(
        tuple(self.prompt), []).append(logits[0].clone()) or real(self, logits, *a))
    short, long = [(3 * i) % 200 + 5 for i in range(7)], [(11 * i) % 300 + 5 for i in range(45)]
    alone = {}
    for p, n in ((short, 20), (long, 6)):
        list(engine.decode_batch(target, [engine.Request(p, max_new_tokens=n)]))
        alone[tuple(p)] = seen.pop(tuple(p))
    together = [engine.Request(short, max_new_tokens=20), engine.Request(long, max_new_tokens=6)]
    list(engine.decode_batch(target, together))
    for p in (short, long):
        assert len(seen[tuple(p)]) == len(alone[tuple(p)])
        for step, (a, b) in enumerate(zip(alone[tuple(p)], seen[tuple(p)], strict=True)):
            assert torch.equal(a, b), (len(p), step)


@pytest.mark.skipif(not cpu_kernel.available(), reason="no C compiler")
def test_on_an_avx512_cpu_without_bf16_pairs_products_widen_the_weights_and_stay_exact(monkeypatch, tmp_path):
    """The kernels built as for an AVX-512 CPU without AVX512_BF16 (Skylake-X, Ice Lake): bf16 and int8
    weights multiply fp32 activations, and speculation in a ragged batch still equals plain decoding."""
    monkeypatch.setenv("SPECTUNE_HOME", str(tmp_path))
    monkeypatch.setattr(cpu_kernel, "FLAGS", [*cpu_kernel.FLAGS, "-mno-avx512bf16"])
    monkeypatch.setattr(cpu_kernel, "_LIB", None)
    monkeypatch.setattr(cpu_kernel, "_FAILED", None)
    assert cpu_kernel.available() and not cpu_kernel.bf16_pairs()
    torch.manual_seed(2)
    x = torch.randn(9, 72)
    w = torch.randn(37, 72).to(torch.bfloat16)
    torch.testing.assert_close(cpu_kernel.linear(x, w), x @ w.float().T, atol=1e-4, rtol=1e-4)  # x not rounded
    assert torch.equal(cpu_kernel.linear(x[:2], w), cpu_kernel.linear(x, w)[:2])
    model = quantize_int8(sharp_llama())
    assert lean_llama.install(model)
    from spectune.decode.engine import Request

    requests = [Request(p, max_new_tokens=16) for p in PROMPTS]
    out = {id(r): [] for r in requests}
    for events in decode_batch(model, requests, drafter=LookupDrafter()):
        for r, tokens in events:
            out[id(r)] += tokens
    assert [out[id(r)] for r in requests] == [[t for c in decode(model, p, max_new_tokens=16) for t in c]
                                              for p in PROMPTS]


def test_a_whole_prompt_runs_causal_attention_without_a_mask_and_a_padded_one_with_it(monkeypatch):
    """SDPA's is_causal (its flash kernel) for a first pass over unpadded prompts; an explicit mask
    where padding or a cache makes attention more than causal."""
    model = sharp_llama()
    assert lean_llama.install(model)
    seen = []
    real = torch.nn.functional.scaled_dot_product_attention

    def spy(q, k, v, attn_mask=None, is_causal=False, **kw):
        seen.append((attn_mask is None, is_causal))
        return real(q, k, v, attn_mask=attn_mask, is_causal=is_causal, **kw)

    monkeypatch.setattr(lean_llama.F, "scaled_dot_product_attention", spy)
    from transformers import DynamicCache

    prompt = [(7 * i) % 97 + 1 for i in range(40)]  # 40 rows: a prompt pass (SDPA), not a kernel step
    with torch.no_grad():
        ids, mask = left_pad([prompt], 0)
        ours, _ = forward_batch(model, ids, mask, DynamicCache(config=model.config))
        assert set(seen) == {(True, True)}
        seen.clear()
        ids, mask = left_pad([prompt, prompt[:30]], 0)  # the second row is left-padded
        padded, _ = forward_batch(model, ids, mask, DynamicCache(config=model.config))
        assert set(seen) == {(False, False)}
    torch.testing.assert_close(ours[0], padded[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ours[0, :30], padded[1, 10:], rtol=1e-5, atol=1e-5)  # its 30 tokens, behind 10 pads
