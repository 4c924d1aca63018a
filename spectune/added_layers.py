"""Layers spectune adds beside a transformers model: NER's CRF (crf.py) and a classifier's n-gram
table (ngrams.py). Each is registered on the model (plain or peft), so the optimizer, accelerate's
checkpoints and resume see its parameters with the encoder's, but kept out of the Hugging Face
weights (`from_pretrained` then sees no unknown keys) and stored in a safetensors file of its own."""

from __future__ import annotations

from pathlib import Path

from torch import nn

FILES = {"crf": "crf.safetensors", "ngrams": "ngrams.safetensors"}  # attribute -> file in the model folder


def attach(model, name: str, module: nn.Module) -> nn.Module:
    model.add_module(name, module)
    model._keys_to_ignore_on_save = {*(getattr(model, "_keys_to_ignore_on_save", None) or ()),
                                     *(f"{name}.{k}" for k in module.state_dict())}
    return module


def find(model, name: str) -> nn.Module:
    """The layer registered on the model, also through a DDP / FSDP wrapper (`.module`)."""
    layer = getattr(model, name, None) or getattr(getattr(model, "module", None), name, None)
    if layer is None:
        raise RuntimeError(f"this task needs the model's {name} layer, and the model carries none")
    return layer


def save_all(model, folder: Path) -> None:
    """Each added layer the model carries into its own file in `folder`."""
    from safetensors.torch import save_file

    for name, file in FILES.items():
        if hasattr(model, name):
            state = getattr(model, name).state_dict()
            save_file({k: v.detach().contiguous() for k, v in state.items()}, str(Path(folder) / file))


def read(folder: Path, name: str) -> dict:
    from safetensors.torch import load_file

    return load_file(str(Path(folder) / FILES[name]))
