"""`--quantize int8`: weight-only int8 for decoding on CPU.

Decoding one token reads every weight once, so at batch 1 the bytes of weights decide the speed.
Each nn.Linear's weight is stored as int8 with one fp32 scale per output row (symmetric,
absmax/127), a quarter of the fp32 bytes. The products go through our own kernel
(cpu_kernel.py): the rest of the model stays fp32, the products take fp32 activations, rounded to
bf16 on a CPU with AVX512_BF16 (twice the products per instruction; see kernels/linear.c), and a row's
result does not depend on how many rows are computed with it, so speculative output equals plain output at int8
as it does at fp32. All int8 weights live in one contiguous buffer in the order the layers run, which
the hardware prefetcher reads faster than a few hundred separate allocations (measured here:
about 19-26 GB/s against 16-18 for the same kernel over separate tensors).

Where the kernel cannot be built (no C compiler), torch's `_weight_int8pack_mm` is used instead;
it is fast only with bf16 activations (49152x576 output layer: int8 with fp32 activations 8.5 ms,
with bf16 1.0 ms), so that fallback computes in bf16 around its int8 linears, and its verification
passes round differently from one-token steps (text may part where two tokens tie).

Speculative decoding stays exact *relative to the quantized target*: verification uses the
quantized model's own logits.
"""

from __future__ import annotations

import torch

from . import cpu_kernel


class Int8Linear(torch.nn.Module):
    """y = x @ (scale * W_int8).T + b, with W (out, in) int8 and scale (out,)."""

    # Passes of this many rows (prefills) multiply dequantized weights instead: torch's kernel costs
    # grow with every row (576 -> 1536: 0.04 ms at 1 row, 0.78 ms at 64; dequantize + bf16 matmul
    # 0.45 ms whatever the rows up to 64), and so does ours, more slowly.
    DEQUANTIZE_FROM = 32

    def __init__(self, linear: torch.nn.Linear, act_dtype: torch.dtype = torch.float32):
        super().__init__()
        w = linear.weight.detach().float()  # (out, in)
        scale = (w.abs().amax(1) / 127.0).clamp(min=1e-12)  # (out,)
        self.register_buffer("weight_int8", torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8))
        self.register_buffer("scale", scale.to(act_dtype))
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach().to(act_dtype))
        self.in_features, self.out_features, self.act_dtype = linear.in_features, linear.out_features, act_dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        rows = x.reshape(-1, self.in_features).to(self.act_dtype)  # (N, in)
        if rows.shape[0] < self.DEQUANTIZE_FROM:
            if self.act_dtype == torch.float32:
                y = cpu_kernel.linear(rows, self.weight_int8, self.scale)  # (N, out)
            else:
                y = torch.ops.aten._weight_int8pack_mm(rows, self.weight_int8, self.scale)
        else:  # the kernel's cost grows with every row: a long prompt is faster on dequantized weights
            w = cpu_kernel.dequantize(self.weight_int8, self.scale) if self.act_dtype == torch.float32 \
                else self.weight_int8.to(self.act_dtype) * self.scale[:, None]
            y = torch.nn.functional.linear(rows, w)
        if self.bias is not None:
            y = y + self.bias
        return y.view(*lead, self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8 weights"


def quantize_int8(model: torch.nn.Module) -> torch.nn.Module:
    """Replace the model's linear layers in place; returns the model. The rest stays fp32 with our
    kernel, and moves to bf16 with torch's fallback.

    A tied output layer gets its own int8 copy (the embedding lookup keeps the float table, which
    reads one row per token). With the fallback, layers whose input width is not a multiple of 8
    stay in bf16: torch's kernel needs it."""
    act = torch.float32 if cpu_kernel.available() else torch.bfloat16
    model.to(act)
    layers = []
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, torch.nn.Linear) and (act == torch.float32 or child.in_features % 8 == 0):
                layers.append(Int8Linear(child, act))
                setattr(module, name, layers[-1])
    # One buffer for every weight, in module order (the order a Llama-style layer runs them).
    flat = torch.empty(sum(m.weight_int8.numel() for m in layers), dtype=torch.int8)
    start = 0
    for m in layers:
        n = m.weight_int8.numel()
        flat[start:start + n].copy_(m.weight_int8.view(-1))
        m.weight_int8 = flat[start:start + n].view_as(m.weight_int8)
        start += n
    model.config.spectune_quantized = "int8"
    return model.eval()


def weight_bytes(model: torch.nn.Module) -> int:
    """Bytes of weights one decoding step reads: the linear layers (int8 ones with their scales) of
    the decoder layers that run (a shallow model may hold more than its config runs)."""
    runs = getattr(getattr(model, "config", None), "num_hidden_layers", None)
    total = 0
    for name, m in model.named_modules():
        parts = name.split(".")
        if runs is not None and "layers" in parts:
            i = parts.index("layers")
            if i + 1 < len(parts) and parts[i + 1].isdigit() and int(parts[i + 1]) >= runs:
                continue
        if isinstance(m, torch.nn.Linear):
            total += m.weight.numel() * m.weight.element_size()
        elif isinstance(m, Int8Linear):
            total += m.weight_int8.numel() + m.scale.numel() * m.scale.element_size()
    return total


def weight_width(model: torch.nn.Module) -> float:
    """Bytes per weight of the model's linear layers (1 for int8 weight-only layers)."""
    for m in model.modules():
        if isinstance(m, Int8Linear):
            return 1.0
        if isinstance(m, torch.nn.Linear):
            return float(m.weight.element_size())
    return 4.0
