"""Loading a resolved model and its tokenizer, always from safetensors."""

from __future__ import annotations

from pathlib import Path

from .errors import SpectuneError
from .models import ModelRef, resolve_model

DTYPES = {"fp32": "float32", "bf16": "bfloat16"}


def torch_dtype(name: str):
    import torch

    if name not in DTYPES:
        raise SpectuneError(f"got {name!r}, expected one of: {', '.join(DTYPES)}", where="dtype")
    return getattr(torch, DTYPES[name])


def load_tokenizer(model: str | Path | ModelRef):
    """The tokenizer stored beside the model (for a GGUF: the one converted from its metadata)."""
    return tokenizer_from_folder(resolve_model(model).path)


def tokenizer_from_folder(folder: str | Path):
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(str(folder))
    except (OSError, ValueError, TypeError) as e:
        raise SpectuneError(f"no usable tokenizer (expected tokenizer.json or tokenizer_config.json with its "
                            f"vocabulary files): {str(e).splitlines()[0]}", where=str(folder)) from None
    if tok.pad_token is None and tok.eos_token is not None:
        tok.pad_token = tok.eos_token  # batching needs a pad id; masked out, so any token serves
    return tok


def load_model(model: str | Path | ModelRef, *, kind: str = "causal-lm", dtype: str = "fp32"):
    """Load the model for `kind` ("causal-lm" or "encoder") in eval mode."""
    from safetensors import SafetensorError
    from transformers import AutoModel, AutoModelForCausalLM

    ref = resolve_model(model)
    if kind == "causal-lm" and ref.kind != "causal-lm":
        raise SpectuneError(f"'{ref.spec}' is {_article(ref.kind)} model, but this needs a causal LM "
                            "(a decoder such as smollm2-135m)", where="model")
    auto = AutoModelForCausalLM if kind == "causal-lm" else AutoModel
    try:
        m = auto.from_pretrained(str(ref.path), dtype=torch_dtype(dtype), use_safetensors=True)
    except (OSError, ValueError, RuntimeError, SafetensorError) as e:
        raise SpectuneError(f"cannot load the model: {str(e).splitlines()[0]}", where=str(ref.path)) from None
    return m.eval()


def _article(kind: str) -> str:
    return f"an {kind}" if kind[0] in "aeiou" else f"a {kind}"
