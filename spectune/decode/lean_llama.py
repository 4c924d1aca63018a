"""Our decoding forward for Llama-family decoder stacks (used when decoding, never in training).

Why: at batch 1 a SmolLM2-135M decoding step reads its weights in about 25 ms (fp32) or 6-10 ms
(int8, our kernel), and transformers' forward added about 15 ms of Python and small tensor
operations around them (module calls, decorators, mask construction, a dozen operations per layer).
This forward does the same arithmetic with fewer, larger operations: one product for q, k and v and
one for gate and up (fused once, in place: the separate projections become views of the fused
weight, nothing is stored twice), RoPE on q and k at once, the mask built once per pass, the KV
cache appended in place (`_append`). Decoding steps (passes of fewer than 32 rows) go further: all
the layers are one call into our C kernel (kernels/step.c: norms, products, RoPE, the cache append,
attention, SiLU gate and residual adds; `_step`), for fp32, bf16 and int8 weights, with fp32
activations (rounded to bf16 for bf16 and int8 weights' products where the CPU has AVX512_BF16),
after Python has made room in the cache buffers (`_room`); the output layer of a float
model goes through the kernel too. With the products already in C, the Python and small tensor
operations around them had cost 8-11 ms of a SmolLM2-135M step (fp32 38 -> 27 ms, bf16 26 -> 16,
int8 16 -> 9 with one call). Prompts (32 rows or more) stay with MKL's matrix products and SDPA,
as does every pass where the step cannot run (see `_step_weights`, `_step`).

It replaces the decoder stack's `forward` on the instance (as --compile does), keeps transformers'
cache objects (DynamicCache, so ragged_cache.py's crop / select / merge / compact work unchanged),
its rotary embedding module (every RoPE scaling variant) and its output layer, and returns what the
stack's own forward returns. A call that asks for hidden states or attentions, or a module in
training, goes to transformers' forward.

A pass may verify a tree of drafts (lookup_tree.py): the keyword `spectune_tree` (B, T, T) says which
of the pass's own positions each one attends to (its ancestors); the kernel masks the rest (step.c),
the torch path builds it into its mask (`_mask`).

What it takes: model_type llama or mistral with no attention or MLP biases, SiLU gate, standard
attention scaling, no sliding window; `supported(model)` says whether a model qualifies, others keep
transformers' forward.

Exactness: attention and the KV cache are fp32 whatever the weights, and the kernels give a row the
same bits whatever the size of its pass (step.c's attention too), so speculative output equals plain
output in every dtype (tested). In fp32 its logits match transformers' to 1e-5 (tested; the kernels round differently
from MKL, so text can part from transformers' where two tokens tie: on the benchmark it never did).
"""

from __future__ import annotations

import types

import torch
import torch.nn.functional as F

from .. import cpu_kernel
from ..quantize import Int8Linear

ARCHITECTURES = {"llama", "mistral"}
# Passes of fewer rows (batch x tokens) are decoding steps, for our kernels; longer ones (prompts) go
# to MKL's matrix products, as int8 layers do (the same threshold).
STEP_ROWS = Int8Linear.DEQUANTIZE_FROM


def supported(model) -> bool:
    config = getattr(model, "config", None)
    stack = getattr(model, "model", None)
    if config is None or stack is None or getattr(config, "model_type", None) not in ARCHITECTURES:
        return False
    if getattr(config, "attention_bias", False) or getattr(config, "mlp_bias", False):
        return False
    if getattr(config, "hidden_act", "silu") != "silu" or getattr(config, "sliding_window", None):
        return False
    layers = getattr(stack, "layers", None)
    if not layers or not all(hasattr(layers[0], n) for n in ("self_attn", "mlp", "input_layernorm")):
        return False
    layer = layers[0]
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    return abs(layer.self_attn.scaling - head_dim ** -0.5) < 1e-9


def _fuse(linears: list) -> tuple:
    """One product for several projections of the same input: ("fp", W (sum out, in), None) or
    ("int8", W int8 (sum out, in), scales). The projections are re-pointed at views of the fused
    weight, so nothing is stored twice and a layers:N draft sharing the modules still works."""
    if all(isinstance(m, torch.nn.Linear) for m in linears):
        fused = torch.cat([m.weight.data for m in linears])
        start = 0
        for m in linears:
            m.weight.data = fused[start:start + m.out_features]
            start += m.out_features
        return "fp", fused, None
    if all(isinstance(m, Int8Linear) and m.act_dtype == torch.float32 for m in linears):
        first, last = linears[0].weight_int8, linears[-1].weight_int8
        # quantize_int8 lays consecutive layers out back to back in one buffer: q, k, v (and gate,
        # up) are then one contiguous (sum out, in) block already.
        contiguous = all(b.weight_int8.data_ptr() == a.weight_int8.data_ptr() + a.weight_int8.numel()
                         for a, b in zip(linears, linears[1:], strict=False))
        if contiguous and first.is_contiguous() and last.is_contiguous():
            rows = sum(m.out_features for m in linears)
            weight = first.view(-1).as_strided((rows, first.shape[1]), (first.shape[1], 1))
        else:
            weight = torch.cat([m.weight_int8 for m in linears])
        return "int8", weight, torch.cat([m.scale for m in linears])
    return ("modules", linears)


def _project(x: torch.Tensor, fused: tuple) -> torch.Tensor:
    """x (B, T, in) -> (B, T, sum out); ("modules", ...) runs each projection and concatenates."""
    if fused[0] == "fp":
        return F.linear(x, fused[1])
    if fused[0] == "int8":
        rows = x.reshape(-1, x.shape[-1])
        if rows.shape[0] < STEP_ROWS:
            y = cpu_kernel.linear(rows, fused[1], fused[2])
        elif cpu_kernel.bf16_matmul():
            # A prompt on the CPU's bf16 matrix units (AMX, AVX512_BF16): int8 weights are exact in bf16,
            # the activations are rounded to bf16 for this product (as --dtype bf16's prompts are), the
            # scale applied in fp32 after. 2.5x the fp32 product's speed on an AMX host (a 150-token
            # prompt, 0.2% apart), 1.8x on this AVX512_BF16 one.
            y = F.linear(rows.to(torch.bfloat16), fused[1].to(torch.bfloat16)).float() * fused[2]
        else:
            y = F.linear(rows, cpu_kernel.dequantize(fused[1], fused[2]))
        return y.view(*x.shape[:-1], -1)
    return torch.cat([m(x) for m in fused[1]], -1)


def _foldable(fused: tuple) -> bool:
    return fused[0] == "int8" or (fused[0] == "fp" and fused[1].dtype in FOLDED_DTYPES)


def _rms(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    if x.dtype == torch.float32:  # one fused op, transformers' formula (its logits match, tested)
        return F.rms_norm(x, weight.shape, weight, eps)
    h = x.float()
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return weight * h.to(x.dtype)


SPARE = 256  # columns a layer's key/value buffer grows by


def _room(layer, new: int) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(key buffer, value buffer, n): an initialized transformers cache layer's n cached columns as the
    prefix of buffers (B, kv_heads, cap, D) with room for `new` more. Whatever replaced layer.keys
    other than a prefix view of the buffer (ragged_cache's select / merge / compact) is noticed and
    copied into a new buffer; a crop's shorter view is not a copy."""
    keys, buf = layer.keys, layer.__dict__.get("_spectune_kv")
    n = keys.shape[-2]
    if buf is None or n + new > buf[0].shape[-2] or not (keys is buf[2] or (
            keys.data_ptr() == buf[0].data_ptr() and keys.stride() == buf[0].stride()
            and keys.shape[:2] == buf[0].shape[:2])):
        shape = (*keys.shape[:2], n + new + SPARE, keys.shape[-1])  # (B, kv_heads, cap, D)
        buf = (keys.new_empty(shape), layer.values.new_empty(shape))
        buf[0][:, :, :n] = keys
        buf[1][:, :, :n] = layer.values
    return buf[0], buf[1], n


def _commit(layer, kbuf: torch.Tensor, vbuf: torch.Tensor, n: int) -> None:
    layer.keys, layer.values = kbuf[:, :, :n], vbuf[:, :, :n]
    layer.__dict__["_spectune_kv"] = (kbuf, vbuf, layer.keys)


def _append(layer, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A transformers cache layer's update without its per-step concatenation (a copy of the whole
    cache, per layer, per token): keys and values become prefix views of buffers with spare columns,
    written in place."""
    if not getattr(layer, "is_initialized", False):
        return layer.update(k, v)
    kbuf, vbuf, n = _room(layer, k.shape[-2])
    kbuf[:, :, n:n + k.shape[-2]] = k
    vbuf[:, :, n:n + k.shape[-2]] = v
    _commit(layer, kbuf, vbuf, n + k.shape[-2])
    return layer.keys, layer.values


def fed_rows(attention_mask, batch: int, new: int) -> torch.Tensor | None:
    """A ragged pass: the positions b*T + t (int32) whose own mask column is set, when some are not
    (a batch's rows verifying different numbers of drafts are padded to the longest); None otherwise.
    Only the positions fed are computed; a padding position's output is never read."""
    if attention_mask is None or new == 1 or attention_mask.shape[0] != batch or torch.compiler.is_compiling():
        return None
    own = attention_mask[:, -new:].reshape(-1).bool()  # (B*T,)
    return None if bool(own.all()) else own.nonzero().view(-1).to(torch.int32)


def _step(stack, x: torch.Tensor, cache, attention_mask, batch: int, new: int, past: int, cos, sin,
          fed: torch.Tensor | None = None, tree: torch.Tensor | None = None) -> bool:
    """A decoding step's layers in one call into our kernel (step.c), x (B*T, H) fp32 updated in place,
    or (m, H), the m positions `fed` lists; `tree` (B, T, T) bool: which positions of the pass each
    sees (a tree of drafts); False, nothing done, where it cannot take it (a cache without per-layer
    keys, a mask of another width)."""
    weights = stack.__dict__["_lean_step"]
    depth = stack.config.num_hidden_layers
    layers = cache.layers[:depth]
    if len(layers) < depth or not all(hasattr(layer, "is_initialized") for layer in layers):
        return False
    cols = None
    if attention_mask is not None and not bool(attention_mask.all()):
        if attention_mask.shape != (batch, past + new):
            return False
        cols = attention_mask.to(torch.uint8).contiguous()
    if past == 0:  # a first pass into a new cache: its layers start empty
        empty = x.new_empty(batch, weights.shape["kv_heads"], 0, weights.shape["head_dim"])  # (B, kv, 0, D)
        for layer in layers:
            if not layer.is_initialized:
                layer.update(empty, empty)
    rooms = [_room(layer, new) for layer in layers]
    cpu_kernel.decode_layers(weights, depth, x, batch, new, [r[0] for r in rooms], [r[1] for r in rooms],
                             [r[0].shape[-2] for r in rooms], past, cos.contiguous(), sin.contiguous(), cols, fed,
                             None if tree is None else tree.to(torch.uint8).contiguous())
    for layer, (kbuf, vbuf, n) in zip(layers, rooms, strict=True):
        _commit(layer, kbuf, vbuf, n + new)
    return True


def _mask(attention_mask: torch.Tensor | None, batch: int, new: int, total: int,
          tree: torch.Tensor | None = None) -> torch.Tensor | None:
    """Boolean (B, 1, T, S+T): row b's query t sees the attended cache columns up to its own, and of
    the pass's own columns only its ancestors where `tree` (B, T, T) says which. None when every
    column is attended and one token is fed (nothing to hide)."""
    # (Under torch.compile a data-dependent test would split the graph: the mask is always built.)
    if attention_mask is not None and not torch.compiler.is_compiling() and bool(attention_mask.all()):
        attention_mask = None
    if attention_mask is None and new == 1:
        return None
    past = total - new
    causal = torch.ones(new, total, dtype=torch.bool).tril(past)  # (T, S+T)
    if tree is not None:
        causal = causal[None].repeat(batch, 1, 1)  # (B, T, S+T)
        causal[:, :, past:] &= tree.bool()
        causal = causal[:, None]  # (B, 1, T, S+T)
    else:
        causal = causal[None, None]
    if attention_mask is None:
        return causal
    mask = causal & attention_mask[:, None, None, :].bool()
    # A padding query (left padding of a prompt) may see nothing at all; let it see itself so SDPA
    # gives numbers rather than NaN. Its output is never read.
    mask[..., torch.arange(new), torch.arange(past, total)] = True
    return mask


def _plan(stack) -> list:
    """Per layer: (norm 1 weight, qkv, o, norm 2 weight, gate-up, down, shapes), built once."""
    config = stack.config
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    plan = []
    for layer in stack.layers:
        a, mlp = layer.self_attn, layer.mlp
        n1, n2 = layer.input_layernorm.weight, layer.post_attention_layernorm.weight
        plan.append((n1, _fuse([a.q_proj, a.k_proj, a.v_proj]), _fuse([a.o_proj]),
                     n2, _fuse([mlp.gate_proj, mlp.up_proj]), _fuse([mlp.down_proj]),
                     (config.num_attention_heads, config.num_key_value_heads, head_dim,
                      mlp.gate_proj.out_features, layer.input_layernorm.variance_epsilon,
                      layer.post_attention_layernorm.variance_epsilon)))
    return plan


def _forward(stack, input_ids=None, attention_mask=None, position_ids=None, cache=None, inputs_embeds=None,
             use_cache=None, past_key_values=None, **kwargs):
    from transformers import DynamicCache
    from transformers.modeling_outputs import BaseModelOutputWithPast

    cache = cache if cache is not None else past_key_values
    tree = kwargs.pop("spectune_tree", None)  # (B, T, T) bool: a tree of drafts' ancestors (engine.forward_batch)
    if kwargs.get("output_hidden_states") or kwargs.get("output_attentions") or stack.training:
        # Not a decoding step: transformers' own forward, which returns what was asked for.
        return type(stack).forward(stack, input_ids=input_ids, attention_mask=attention_mask,
                                   position_ids=position_ids, cache=cache, inputs_embeds=inputs_embeds,
                                   use_cache=use_cache, **kwargs)
    if cache is None and use_cache is not False:
        cache = DynamicCache(config=stack.config)
    x = stack.embed_tokens(input_ids) if inputs_embeds is None else inputs_embeds  # (B, T, H)
    batch, new = x.shape[:2]
    depth = stack.config.num_hidden_layers
    past = cache.get_seq_length() if cache is not None else 0
    if position_ids is None:
        position_ids = (torch.arange(new) + past)[None].expand(batch, -1)
    # Under torch.compile the cache stays transformers' own (in-place views would be graph breaks).
    compiling = torch.compiler.is_compiling() or not hasattr(cache, "layers")
    # Eager decoding steps (passes of fewer than STEP_ROWS rows) with int8, fp32 or bf16 weights: all
    # the layers in one call into our kernel, on x held as one contiguous (B*T, H) fp32 block updated
    # in place. Prompts (long passes) stay with MKL's matrix products and SDPA.
    fed = fed_rows(attention_mask, batch, new)
    step = (not compiling and (batch * new if fed is None else fed.numel()) < STEP_ROWS
            and x.dtype in FOLDED_DTYPES and stack.__dict__["_lean_step"] is not None and cpu_kernel.available())
    cos, sin = stack.rotary_emb(x.float(), position_ids=position_ids)  # (B, T, D) each, fp32
    # RoPE's rotate_half(x) * sin, as roll(x) * (sin with its first half negated): two operations
    # fewer per layer, the same products (a sign flip is exact).
    half = sin.shape[-1] // 2
    sin = torch.cat((-sin[..., :half], sin[..., half:]), -1)
    if step:
        rows = x.reshape(batch * new, -1).float()  # (B*T, H), or the m rows fed: ours to update in place
        rows = rows.clone() if fed is None else rows[fed.long()]
        if _step(stack, rows, cache, attention_mask, batch, new, past, cos, sin, fed, tree):
            if fed is not None:  # padding positions: zero hidden states (their logits are never read)
                rows = rows.new_zeros(batch * new, rows.shape[1]).index_copy_(0, fed.long(), rows)
            return BaseModelOutputWithPast(last_hidden_state=stack.norm(rows.view(batch, new, -1).to(x.dtype)),
                                           cache=cache)
    cos, sin = cos[:, None], sin[:, None]  # (B, 1, T, D)
    # A first pass over whole prompts (no cache, no padding, no tree) is plain causal attention: SDPA's
    # is_causal runs its flash kernel, where an explicit mask makes it build every (T, T) score
    # matrix (a 3,000-token fp32 prompt: 8.6 s with the mask, transformers 6.3 s).
    is_causal = (past == 0 and new > 1 and tree is None and (attention_mask is None or (
        not torch.compiler.is_compiling() and bool(attention_mask.all()))))
    mask = None if is_causal else _mask(attention_mask, batch, new, past + new, tree)
    for i, (n1, qkv, o_proj, n2, gate_up, down, shape) in enumerate(stack.__dict__["_lean_plan"][:depth]):
        heads, kv_heads, head_dim, inter, eps1, eps2 = shape
        y = _project(_rms(x, n1, eps1), qkv)  # (B, T, (heads + 2 kv_heads) D)
        qk = y[..., :(heads + kv_heads) * head_dim].view(batch, new, heads + kv_heads, head_dim).transpose(1, 2)
        # Attention and the KV cache in fp32 whatever the weights: a bf16 SDPA rounds a pass of k+1
        # queries differently from one of 1, which would make speculative text part from plain text.
        qk = (qk * cos + qk.roll(half, -1) * sin).float()  # (B, heads + kv_heads, T, D): q's and k's RoPE
        q, k = qk[:, :heads], qk[:, heads:]  # (B, heads, T, D), (B, kv_heads, T, D)
        v = y[..., (heads + kv_heads) * head_dim:].view(batch, new, kv_heads, head_dim).transpose(1, 2).float()
        if cache is not None:  # (B, kv_heads, S+T, D)
            k, v = cache.update(k, v, i) if compiling else _append(cache.layers[i], k, v)
        att = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal,
                                             enable_gqa=kv_heads != heads)
        att = att.transpose(1, 2).reshape(batch, new, heads * head_dim)  # (B, T, heads D)
        x = x + _project(att.to(x.dtype), o_proj)
        g = _project(_rms(x, n2, eps2), gate_up)  # (B, T, 2 I)
        x = x + _project(F.silu(g[..., :inter]) * g[..., inter:], down)
    return BaseModelOutputWithPast(last_hidden_state=stack.norm(x), cache=cache)


FOLDED_DTYPES = (torch.float32, torch.bfloat16)


def _head_forward(head, x: torch.Tensor) -> torch.Tensor:
    """The output layer of a decoding step through our kernel (fp32 or bf16 weights, fp32 logits);
    prompts and everything else through F.linear."""
    rows = x.reshape(-1, x.shape[-1])
    if rows.shape[0] < STEP_ROWS and not torch.compiler.is_compiling() and cpu_kernel.available():
        return cpu_kernel.linear(rows.float(), head.weight).view(*x.shape[:-1], -1)
    return F.linear(x, head.weight, head.bias)


def _step_weights(stack, plan: list) -> cpu_kernel.StepWeights | None:
    """The plan as step.c's pointer arrays; None where a layer's products are not all int8 or all one
    float type (bf16 or fp32), or the norms' eps differ (this forward's torch operations then)."""
    norms, weights, scales = [], [], []
    for n1, qkv, o_proj, n2, gate_up, down, _ in plan:
        norms += [n1.detach().float(), n2.detach().float()]
        for fused in (qkv, o_proj, gate_up, down):
            if not _foldable(fused):
                return None
            weights.append(fused[1])
            scales.append(fused[2])
    eps = {p[6][4] for p in plan} | {p[6][5] for p in plan}
    if len({w.dtype for w in weights}) != 1 or len(eps) != 1 or not all(w.is_contiguous() for w in weights):
        return None
    heads, kv_heads, head_dim, inter = plan[0][6][:4]
    return cpu_kernel.StepWeights(norms, weights, scales, {
        "hidden": stack.config.hidden_size, "heads": heads, "kv_heads": kv_heads, "head_dim": head_dim,
        "inter": inter, "eps": eps.pop(), "scale": stack.layers[0].self_attn.scaling})


def install(model) -> bool:
    """Give the model's decoder stack the lean forward, and a float output layer our kernel (in place);
    False, and nothing changed, when the model does not qualify or has a forward of its own already
    (a compiled stack)."""
    if not supported(model) or "forward" in model.model.__dict__:
        return False
    stack = model.model
    plan = stack.__dict__["_lean_plan"] = _plan(stack)
    # (A layers:N draft runs a prefix of the same layers: the same weights serve it.)
    stack.__dict__["_lean_step"] = _step_weights(stack, plan)
    stack.forward = types.MethodType(_forward, stack)
    head = model.get_output_embeddings()
    head_weight = head.weight_int8 if isinstance(head, Int8Linear) else getattr(head, "weight", None)
    cpu_kernel.huge_pages([p[j][1] for p in plan for j in (1, 2, 4, 5) if p[j][0] != "modules"]
                          + ([head_weight] if head_weight is not None else []))
    if (type(head) is torch.nn.Linear and head.bias is None and head.weight.dtype in FOLDED_DTYPES
            and head.weight.is_contiguous()):
        head.forward = types.MethodType(_head_forward, head)
    return True


def installed(model) -> bool:
    """Whether the model's decoder stack runs this forward."""
    return "_lean_plan" in getattr(getattr(model, "model", None), "__dict__", {})


def takes_trees(model) -> bool:
    """Whether a pass may verify a tree of drafts (`spectune_tree`): our forward, not compiled over
    (every new tree shape would be a new graph)."""
    return installed(model) and not model.model.__dict__.get("_spectune_compiled")


def rebind(original, copy) -> None:
    """A layers:N draft's copy of the stack runs the same lean forward over its own depth."""
    if "_lean_plan" in original.__dict__:
        for key in ("_lean_plan", "_lean_step"):
            copy.__dict__[key] = original.__dict__[key]
        copy.forward = types.MethodType(_forward, copy)
