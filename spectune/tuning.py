"""Which parameters train: full, lora, prompt, freeze (top k layers + head), bitfit (biases + head).

LoRA and prompt tuning come from peft. Freezing all but the top layers and BitFit are ours (peft
has neither): both are a choice of `requires_grad`, nothing more.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .errors import SpectuneError

METHODS = ("full", "lora", "prompt", "freeze", "bitfit")


@dataclass
class TuningOptions:
    method: str = "full"
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.05
    lora_targets: str = "all-linear"  # or a comma-separated list of module names
    prompt_tokens: int = 20
    freeze_top_k: int = 2


def _peft_task_type(task: str):
    from peft import TaskType

    return {"ner": TaskType.TOKEN_CLS, "classify": TaskType.SEQ_CLS, "lm": TaskType.CAUSAL_LM}[task]


def apply_tuning(model: torch.nn.Module, opts: TuningOptions, task: str) -> torch.nn.Module:
    """Mark what trains (or wrap in peft) and return the model to train."""
    if opts.method not in METHODS:
        raise SpectuneError(f"got {opts.method!r}, expected one of: {', '.join(METHODS)}", where="peft")
    if opts.method == "full":
        for p in model.parameters():
            p.requires_grad_(True)
        return model
    if opts.method == "lora":
        from peft import LoraConfig, get_peft_model

        targets = opts.lora_targets if opts.lora_targets == "all-linear" else \
            [t.strip() for t in opts.lora_targets.split(",") if t.strip()]
        cfg = LoraConfig(task_type=_peft_task_type(task), r=opts.lora_r, lora_alpha=opts.lora_alpha,
                         lora_dropout=opts.lora_dropout, target_modules=targets)
        try:
            return get_peft_model(model, cfg)
        except ValueError as e:
            raise SpectuneError(f"LoRA cannot be applied: {str(e).splitlines()[0]}", where="lora_targets") from None
    if opts.method == "prompt":
        if task == "ner":
            raise SpectuneError("prompt tuning prepends virtual tokens, which shifts every token label; "
                                "use --peft lora or freeze for NER", where="peft")
        from peft import PromptTuningConfig, get_peft_model

        return get_peft_model(model, PromptTuningConfig(task_type=_peft_task_type(task),
                                                        num_virtual_tokens=opts.prompt_tokens))
    head = head_parameters(model)
    for p in model.parameters():
        p.requires_grad_(False)
    if opts.method == "freeze":
        name, layers = transformer_layers(model)
        k = opts.freeze_top_k
        if not 1 <= k <= len(layers):
            raise SpectuneError(f"got {k}, but the model has {len(layers)} layers", where="freeze_top_k")
        trained = [p for layer in layers[len(layers) - k:] for p in layer.parameters()]
        trained += [p for n, p in model.named_parameters() if _is_final_norm(n, name)]
    else:  # bitfit
        trained = [p for n, p in model.named_parameters() if n.endswith(".bias") and n not in head]
        if not trained:
            raise SpectuneError(f"{type(model).__name__} has no bias terms, so BitFit has nothing to train; "
                                "use --peft lora or freeze", where="peft")
    for p in trained + list(head.values()):
        p.requires_grad_(True)
    return model


def head_parameters(model) -> dict[str, torch.nn.Parameter]:
    """Parameters outside the base transformer: the task head (classifier, score, lm_head)."""
    prefix = getattr(model, "base_model_prefix", "") + "."
    return {n: p for n, p in model.named_parameters() if not n.startswith(prefix)}


def transformer_layers(model) -> tuple[str, torch.nn.ModuleList]:
    """The stack of transformer blocks: the longest ModuleList in the model."""
    best = max(((n, m) for n, m in model.named_modules() if isinstance(m, torch.nn.ModuleList)),
               key=lambda nm: len(nm[1]), default=None)
    if best is None:
        raise SpectuneError(f"{type(model).__name__}: no stack of layers found to freeze", where="peft")
    return best


def _is_final_norm(param_name: str, layers_name: str) -> bool:
    """The norm applied after the last block (llama: model.norm), which the top layers feed."""
    owner = layers_name.rsplit(".", 1)[0] if "." in layers_name else ""
    rest = param_name[len(owner) + 1:] if owner and param_name.startswith(owner + ".") else param_name
    return "." not in rest.rsplit(".", 1)[0] and "norm" in rest.lower() and not rest.startswith("layers")


def count_parameters(model) -> tuple[int, int]:
    """(trainable, total), each tensor counted once (tied weights are one tensor)."""
    seen, trainable, total = set(), 0, 0
    for p in model.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        total += p.numel()
        trainable += p.numel() if p.requires_grad else 0
    return trainable, total
