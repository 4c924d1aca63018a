"""`--compile`: the target's decoder stack through torch.compile (Inductor), for decoding speed.

Why: at batch 1 a decoding step is a few hundred matrix-vector products plus, around each layer,
a few dozen small operations (norms, RoPE, residual adds, casts, the cache's concatenation), each a
separate dispatch of microseconds on a vector of 576 numbers (a profile of one fp32 step of
SmolLM2-135M here: about 60% of it in the products). Inductor fuses the small operations into a
few generated C++ loops. bench/decode.py, same run, with transformers' forward (before our own):
compiled plain decoding 1.14-1.24x transformers' generate in fp32, 1.24-1.45x in int8, where the
eager loop was at 0.93-1.04x. Llama-family models now decode on our forward and kernels
(lean_llama.py), which are faster still and skip compiling (generate.py says so).

What is compiled: the decoding steps of the decoder stack (`model.model`, embeddings to final
norm), with `dynamic=True`, so a graph serves every cache length, batch size and number of drafts
fed (a graph per shape would recompile at every step). Dynamo still treats a size of 1 apart: a
step of one token and one of several, at batch 1 and at several rows, are four graphs; warm_up
compiles the ones a caller will use. Prefills run eagerly (see compile_model). The output layer
runs eagerly too: one large product with nothing to fuse.

Cost: compiling takes 1-5 minutes on 2 cores the first time (Inductor keeps its kernels in an on-disk
cache, so later processes take about a minute), paid once per process. `warm_up` pays it before
the first request: a server or a long --prompts file earns it back, a single short prompt does not.

Exactness: speculative output equals plain output *of the compiled model* (tested); the compiled
kernels round differently from eager ones, so compiled and eager text may part where two tokens'
logits are within rounding of each other, as between dtypes.
"""

from __future__ import annotations

import sys
import time

import torch


def decoder_stack(model) -> torch.nn.Module:
    """The base model under the LM head (`model.model` for Llama-family models, `transformer` for GPT-2)."""
    inner = getattr(model, getattr(model, "base_model_prefix", "model"), None)
    if not isinstance(inner, torch.nn.Module):
        from ..errors import SpectuneError

        raise SpectuneError(f"{type(model).__name__}: --compile needs a causal LM with a base model under its "
                            "head", where="compile")
    return inner


# Passes of more tokens than this (prefills, wide speculative batches) run eagerly: they are
# matrix-product bound, where fusing gains little, and each would be another graph to compile. It is
# also where int8 layers switch kernels (quantize.Int8Linear.DEQUANTIZE_FROM), so compiled passes
# never take that branch.
COMPILED_TOKENS = 32


def compile_model(model) -> torch.nn.Module:
    """Compile the model's decoder stack in place (lazily: the first decoding step compiles); returns it.

    Graphs: dynamo specialises sizes 0 and 1, so a decoding step of one token and a verification of
    several are two graphs, and a batch of one and of several two more. The wrapper keeps every
    other guard stable: it sends prefills (empty cache) and passes of more than COMPILED_TOKENS
    tokens to the eager forward, and hands the compiled one contiguous caches (a cache cropped after
    a rejection is a strided view, and each new stride would be a recompilation).

    The wrapper is an attribute of the decoder-stack instance, so `layers:N` drafts, which copy that
    module to run fewer layers, drop it and run eagerly (see drafters.layers_drafter)."""
    inner = decoder_stack(model)
    if inner.__dict__.get("_spectune_compiled"):
        return model
    # Allow more graphs than the default 8 before dynamo gives up and runs eagerly.
    torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 64)
    eager = inner.forward
    compiled = torch.compile(eager, dynamic=True)

    def forward(*args, **kwargs):
        cache = kwargs.get("cache", kwargs.get("past_key_values"))
        ids = kwargs.get("input_ids")
        if cache is None or ids is None or ids.numel() > COMPILED_TOKENS or cache.get_seq_length() == 0:
            return eager(*args, **kwargs)
        for layer in getattr(cache, "layers", ()):
            if not (layer.keys.is_contiguous() and layer.values.is_contiguous()):
                layer.keys, layer.values = layer.keys.contiguous(), layer.values.contiguous()
        return compiled(*args, **kwargs)

    inner.forward = forward
    inner.__dict__["_spectune_compiled"] = True
    return model


@torch.no_grad()
def warm_up(model, *, batched: bool = False, speculative: bool = True, quiet: bool = False) -> float:
    """Compile now rather than on the first request: decoding steps of one token and (`speculative`)
    of several, at batch 1 and (`batched`) in a batch of rows of different lengths. Returns the
    seconds spent."""
    from .engine import Request, decode_batch

    t0 = time.perf_counter()
    if not quiet:
        print("compiling the model (minutes the first time on this machine)...", file=sys.stderr, flush=True)
    vocab = model.get_input_embeddings().num_embeddings
    prompts = [[(7 * i) % vocab for i in range(1, 41)], [(11 * i) % vocab for i in range(1, 6)]]

    class Repeat:  # always drafts: every pass feeds several tokens, as speculation does
        def propose(self, context, k, sampling, generator):
            return [context[-1]] * k, None

    try:
        for drafter in (None, Repeat()) if speculative else (None,):
            for rows in (prompts, prompts[:1]) if batched else (prompts[:1],):
                for _ in decode_batch(model, [Request(p, max_new_tokens=4) for p in rows], drafter=drafter,
                                      adaptive=False):
                    pass
    except Exception as e:  # Inductor needs a working C++ compiler, and not every model traces
        from ..errors import SpectuneError

        first = (str(e).strip().splitlines() or [""])[0][:200]
        raise SpectuneError(f"torch.compile failed ({type(e).__name__}: {first}); run without --compile",
                            where="compile") from None
    seconds = time.perf_counter() - t0
    if not quiet:
        print(f"compiled in {seconds:.0f} s", file=sys.stderr, flush=True)
    return seconds
