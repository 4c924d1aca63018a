"""Our CPU decoding kernels (spectune/kernels/), built on first use: the int8 product of
`--quantize int8` (linear.c), and what our decoding forward (decode/lean_llama.py) uses, for int8,
fp32 and bf16 weights: a whole decoding step's layers in one call (step.c: norms, products, RoPE,
KV cache append, attention) and the float output layer's product.

Why C: torch's weight-only int8 kernels run at about 9-10 GB/s of weights here, bound by widening
int8 to float rather than by reading memory, which left int8 decoding barely faster than fp32; and
at batch 1 a decoding step's dozen small tensor operations per layer cost as much as its products
(see the C files). The kernels are plain C with AVX-512 where the CPU has it (a portable loop
otherwise), compiled once per machine with the system's C compiler into `$SPECTUNE_HOME/kernels/`,
and called through ctypes (which releases the GIL).

Inside `torch.compile` the int8 product is the custom op `spectune::int8_linear`, which Inductor
calls between its fused kernels; in eager mode it is called directly (a custom op's dispatch costs
more than the kernel on the smallest layers).

No compiler, a failed build or a CPU without AVX-512 (where the portable C loops are slower than
torch's kernels): `available()` is False, said once on stderr; quantize.py falls back
to torch's int8 kernel (in bf16) and the lean forward to torch's operations.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import torch

KERNELS = Path(__file__).parent / "kernels"
SOURCES = [KERNELS / "linear.c", KERNELS / "step.c"]  # (and kernels.h, which they share)
_LIB: ctypes.CDLL | None = None
_FAILED: str | None = None
# -ffp-contract=off: the compiler must not fuse a multiply and an add in one code path and not in
# another, or a row's result would depend on the path (one-token steps vs verification passes).
FLAGS = ["-O3", "-march=native", "-ffp-contract=off", "-fopenmp", "-fPIC"]
# Each call runs on torch.get_num_threads() threads, read at the call, so torch.set_num_threads applies.


def _build_dir() -> Path:
    from .gguf_convert import spectune_home

    return spectune_home() / "kernels"


def _compile(out: Path) -> None:
    cc = os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc"
    cc = cc.split()[0] if shutil.which(cc.split()[0]) else "cc"
    torch_lib = Path(torch.__file__).parent / "lib"
    # Link the libgomp torch itself loaded (by its soname), so both share one OpenMP pool.
    gomp = ["-L", str(torch_lib), "-l:libgomp.so.1", f"-Wl,-rpath,{torch_lib}"] \
        if (torch_lib / "libgomp.so.1").exists() else ["-fopenmp"]
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    objs = [tmp.with_suffix(f".{source.stem}.o") for source in SOURCES]
    try:
        for source, obj in zip(SOURCES, objs, strict=True):
            subprocess.run([cc, *FLAGS, "-I", str(KERNELS), "-c", str(source), "-o", str(obj)], check=True,
                           capture_output=True, text=True)
        subprocess.run([cc, "-shared", "-o", str(tmp), *map(str, objs), *gomp, "-lm"], check=True,
                       capture_output=True, text=True)
        os.replace(tmp, out)
    finally:
        for obj in objs:
            obj.unlink(missing_ok=True)
        tmp.unlink(missing_ok=True)


def library() -> ctypes.CDLL | None:
    """The compiled kernel, building it if needed; None when it cannot be built."""
    global _LIB, _FAILED
    if _LIB is not None or _FAILED is not None:
        return _LIB
    if "avx512f" not in _cpu_flags().split():
        # The kernels' fast paths are AVX-512; their portable loops are slower than torch's kernels
        # (measured here with an AVX2 build: fp32 decoding 8.4 tokens/s against 14.5 with torch's).
        _FAILED = "this CPU has no AVX-512"
        print(f"spectune: CPU kernels not used ({_FAILED}); decoding uses torch's kernels", file=sys.stderr)
        return None
    # One build per source text, flags, CPU type and torch install: -march=native code is this machine's.
    sources = b"".join(f.read_bytes() for f in [*SOURCES, KERNELS / "kernels.h"])
    ident = sources + " ".join(FLAGS).encode() + torch.__file__.encode() + _cpu_flags().encode()
    key = hashlib.sha256(ident).hexdigest()[:16]
    path = _build_dir() / f"linear-{key}.so"
    try:
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            _compile(path)
        lib = ctypes.CDLL(str(path))
    except (OSError, subprocess.CalledProcessError) as e:
        detail = getattr(e, "stderr", "") or str(e)
        _FAILED = (detail.strip().splitlines() or ["unknown error"])[0][:200]
        print(f"spectune: CPU kernels unavailable ({_FAILED}); decoding uses torch's kernels (slower)",
              file=sys.stderr)
        return None
    ptr, num = ctypes.c_void_p, ctypes.c_int
    lib.linear.argtypes = [ptr, ptr, num, ptr, ptr, num, num, num, num]
    lib.linear.restype = None
    lib.int8_dequantize.argtypes = [ptr, ptr, ptr, num, num, num]
    lib.int8_dequantize.restype = None
    ptrs = ctypes.POINTER(ctypes.c_void_p)
    lib.decode_layers.argtypes = [num, ptr, num, num, num, ptrs, ctypes.c_float, ptrs, ptrs, num, num, num, num, num,
                                  ptrs, ptrs, ctypes.POINTER(ctypes.c_int), num, ptr, ptr, ptr, ptr,
                                  ctypes.c_float, ptr, num, num]
    lib.decode_layers.restype = None
    lib.bf16_pairs.restype = ctypes.c_int
    _LIB = lib
    return lib


def _cpu_flags() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return line
    except OSError:
        pass
    return ""


def bf16_matmul() -> bool:
    """Whether this CPU multiplies bf16 matrices faster than fp32 ones, so that an int8 model's prompt
    products run in bf16 (torch's oneDNN): on AMX tiles (1.4 TFLOPS against 0.27 in fp32, measured on
    an AMX host) or with AVX512_BF16's pair products (378 GFLOPS against 154 on this AMD host, a
    200x576 @ 576x1536 product; an int8 SmolLM2 prompt of 200 tokens 312 -> 177 ms). Without either,
    bf16 products are emulated and slower than fp32."""
    global _BF16_MATMUL
    if _BF16_MATMUL is None:
        flags = _cpu_flags().split()
        _BF16_MATMUL = "amx_bf16" in flags or "avx512_bf16" in flags
    return _BF16_MATMUL


_BF16_MATMUL: bool | None = None


def available() -> bool:
    return library() is not None


def bf16_pairs() -> bool:
    """Whether the kernels multiply bf16 and int8 weights with activations rounded to bf16 (a CPU with
    AVX512_BF16: 32 pairs per instruction, see linear.c) rather than with fp32 activations."""
    return available() and bool(_LIB.bf16_pairs())


KINDS = {torch.int8: 0, torch.float32: 1, torch.bfloat16: 2}  # the C file's INT8, FP32, BF16


def _ptr(t: torch.Tensor | None):
    return None if t is None else t.data_ptr()


def _linear(x: torch.Tensor, w: torch.Tensor, scale: torch.Tensor | None) -> torch.Tensor:
    x = x.contiguous()
    y = torch.empty(x.shape[0], w.shape[0], dtype=torch.float32)
    _LIB.linear(x.data_ptr(), w.data_ptr(), KINDS[w.dtype], _ptr(scale), y.data_ptr(), x.shape[0], w.shape[1],
                w.shape[0], torch.get_num_threads())
    return y


@torch.library.custom_op("spectune::int8_linear", mutates_args=())
def _int8_linear_op(x: torch.Tensor, w: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return _linear(x, w, scale)


@_int8_linear_op.register_fake
def _(x, w, scale):
    return x.new_empty(x.shape[0], w.shape[0])


def dequantize(w: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """(out, in) fp32 weights scale * w, for passes long enough that MKL's product wins (prompts)."""
    if torch.compiler.is_compiling() or _LIB is None:
        return w.float() * scale[:, None]
    out = torch.empty(w.shape, dtype=torch.float32)
    _LIB.int8_dequantize(w.data_ptr(), scale.data_ptr(), out.data_ptr(), w.shape[0], w.shape[1],
                         torch.get_num_threads())
    return out


def linear(x: torch.Tensor, w: torch.Tensor, scale: torch.Tensor | None = None) -> torch.Tensor:
    """x (N, in) fp32 @ (scale * w).T -> (N, out) fp32; w (out, in) contiguous, int8 with scale (out,)
    fp32, or fp32 / bf16 with no scale (an output layer). Call only when available()."""
    if torch.compiler.is_compiling():  # int8 layers in a compiled forward: the custom op
        return _int8_linear_op(x, w, scale)
    return _linear(x, w, scale)


class StepWeights:
    """A decoder stack's layer weights as the pointer arrays `decode_layers` (step.c) takes, built once
    (the tensors are kept, so the pointers stay valid): per layer two fp32 norm weights and four
    products (fused q/k/v, o, fused gate/up, down), all of one kind, int8 ones with their scales."""

    def __init__(self, norms: list[torch.Tensor], weights: list[torch.Tensor], scales: list[torch.Tensor | None],
                 shape: dict):
        self.args = (norms, weights, scales, shape)
        self.norms = (ctypes.c_void_p * len(norms))(*(t.data_ptr() for t in norms))
        self.weights = (ctypes.c_void_p * len(weights))(*(t.data_ptr() for t in weights))
        self.scales = (ctypes.c_void_p * len(scales))(*(_ptr(t) for t in scales))
        self.kind = KINDS[weights[0].dtype]
        self.shape = shape  # hidden, heads, kv_heads, head_dim, inter, eps, scale

    def __deepcopy__(self, memo):  # a copied model: the pointers of its own (copied) tensors
        import copy

        return StepWeights(*copy.deepcopy(self.args, memo))


def decode_layers(plan: StepWeights, layers: int, x: torch.Tensor, batch: int, new: int, keys: list, values: list,
                  caps: list[int], past: int, cos: torch.Tensor, sin: torch.Tensor, cols: torch.Tensor | None,
                  rows: torch.Tensor | None = None, tree: torch.Tensor | None = None) -> None:
    """The first `layers` decoder layers over x (B*T, hidden) fp32 in place, writing the step's keys and
    values into the cache buffers keys[l] / values[l] (B, kv_heads, caps[l], D) at columns past..past+T.
    cos, sin (B, T, D) fp32 contiguous (sin's first half negated); cols (B, past+T) uint8 or None.
    rows (m,) int32, optional: a ragged pass, x then (m, hidden) holds only the positions b*T + t listed
    (the others get zero keys and values, masked). tree (B, T, T) uint8 contiguous, optional: which
    positions of the pass each one sees (its ancestors in a tree of drafts, itself included)."""
    assert rows is None or (rows.dtype == torch.int32 and rows.is_contiguous() and x.shape[0] == rows.numel())
    assert tree is None or (tree.dtype == torch.uint8 and tree.is_contiguous() and tree.shape == (batch, new, new))
    p = plan.shape
    _LIB.decode_layers(layers, x.data_ptr(), batch, new, p["hidden"], plan.norms, p["eps"], plan.weights,
                       plan.scales, plan.kind, p["heads"], p["kv_heads"], p["head_dim"], p["inter"],
                       (ctypes.c_void_p * layers)(*(k.data_ptr() for k in keys)),
                       (ctypes.c_void_p * layers)(*(v.data_ptr() for v in values)), (ctypes.c_int * layers)(*caps),
                       past, cos.data_ptr(), sin.data_ptr(), _ptr(cols), _ptr(tree), p["scale"], _ptr(rows),
                       rows.numel() if rows is not None else 0, torch.get_num_threads())


_MADV_HUGEPAGE, _MADV_COLLAPSE, _HUGE = 14, 25, 2 << 20


def huge_pages(tensors: list[torch.Tensor]) -> int:
    """Ask Linux to back these tensors' storages with 2 MB pages (madvise HUGEPAGE, then COLLAPSE, which
    moves the pages already there; Linux 6.1+), best effort; returns the bytes collapsed.

    Why: a decoding step streams every weight once, and with 4 KB pages that is a TLB miss every 4 KB
    (every 4096 int8 weights). On this machine (transparent huge pages on request only) the int8 and
    bf16 products read their weights up to a quarter faster from 2 MB pages (side measurement; fp32,
    bound by bandwidth, barely changes). Only whole 2 MB pages inside a storage are advised, so no
    other allocation's memory is touched."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
    except OSError:
        return 0
    libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    done, seen = 0, set()
    for t in tensors:
        storage = t.untyped_storage()
        start, size = storage.data_ptr(), storage.nbytes()
        if start in seen or size < 2 * _HUGE or t.device.type != "cpu":
            continue
        seen.add(start)
        first, end = (start + _HUGE - 1) & ~(_HUGE - 1), (start + size) & ~(_HUGE - 1)
        if end > first and libc.madvise(first, end - first, _MADV_HUGEPAGE) == 0 \
                and libc.madvise(first, end - first, _MADV_COLLAPSE) == 0:
            done += end - first
    return done
