"""A run folder: what `spectune train` writes, and how eval / predict / merge load it back.

    RUN/spectune.json    task, labels, base model, tuning, arguments, versions, best metric
    RUN/model/           the best weights (a full model, or a peft adapter) with the tokenizer
    RUN/checkpoint-last/ model, optimizer, scheduler, RNG and step, for --resume
    RUN/metrics.csv, curves.png, test-report.{json,txt}, confusion.png

Every folder is written under a temporary name and renamed into place, so a crash mid-write
never corrupts the best model or the last checkpoint.
"""

from __future__ import annotations

import json
from pathlib import Path

from .atomic import write_atomic
from .errors import SpectuneError

RUN_FILE = "spectune.json"
PEFT_METHODS = ("lora", "prompt")


def read_run(run_dir: str | Path) -> dict:
    run_dir = Path(run_dir)
    f = run_dir / RUN_FILE
    if not f.is_file():
        raise SpectuneError(f"not a spectune run folder (no {RUN_FILE}); expected the --out folder of "
                            "`spectune train`", where=str(run_dir))
    try:
        return json.loads(f.read_text())
    except ValueError as e:
        raise SpectuneError(f"invalid JSON: {e}", where=str(f)) from None


def max_positions(base: str) -> int | None:
    """The longest input the base model's position embeddings allow, if it says."""
    from transformers import AutoConfig

    from .models import resolve_model
    from .scratch import MAX_POSITIONS, is_scratch

    if is_scratch(base):
        return MAX_POSITIONS
    if is_run(base):
        return max_positions(read_run(base)["base_model"])
    config = AutoConfig.from_pretrained(resolve_model(base).path)
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length"):
        if isinstance(getattr(config, key, None), int):
            return getattr(config, key)
    return None


def is_run(spec: str | Path) -> bool:
    return (Path(spec) / RUN_FILE).is_file()


def load_generation_model(spec: str):
    """A causal LM to generate with: a model spec, or an lm run folder (a LoRA adapter merged)."""
    if is_run(spec):
        info, _, model = load_run(spec)
        if info["task"] != "lm":
            raise SpectuneError(f"is a {info['task']} run; a causal-LM (lm) run or a model is needed", where=str(spec))
        return (model.merge_and_unload() if hasattr(model, "merge_and_unload") else model).eval()
    from .loading import load_model

    return load_model(spec).eval()


def fingerprint(spec: str) -> str:
    """Identity of a generation model's weights: SHA-256 over its safetensors files (a run: its
    model folder's, plus its base model's for an adapter). Drafts record their target's."""
    import hashlib

    from .gguf_convert import file_sha256

    h = hashlib.sha256()
    if is_run(spec):
        info = read_run(spec)
        folder = Path(spec) / "model"
        if info.get("peft") in PEFT_METHODS:
            h.update(fingerprint(info["base_model"]).encode())
    else:
        from .models import resolve_model

        folder = Path(resolve_model(spec).path)
    for f in sorted(folder.glob("*.safetensors")):
        h.update(file_sha256(f).encode())
    return h.hexdigest()


def set_dropout(config, p: float | None) -> None:
    """Every dropout probability of a model config set to `p` (None: left as they are)."""
    if p is not None:
        for key, value in list(config.to_dict().items()):
            if "dropout" in key and isinstance(value, float):
                setattr(config, key, p)


def check_draft(draft_run: str | Path, target_spec: str) -> dict:
    """A draft run's info, refused unless `spectune distill` made it for `target_spec`'s weights."""
    info = read_run(draft_run)
    if info.get("task") != "draft":
        raise SpectuneError("is not a draft run; distil one with `spectune distill`", where=str(draft_run))
    if info.get("target_fingerprint") != fingerprint(target_spec):
        raise SpectuneError(f"this draft was distilled for {info['base_model']!r}, whose weights differ from "
                            f"{target_spec!r}'s; distil one for this target with `spectune distill`",
                            where=str(draft_run))
    return info


def build_model(task, base: str, labels: list[str] | None, dropout: float | None = None):
    """The task's head on a resolved base model, loaded from safetensors."""
    import torch
    from transformers import AutoConfig

    if hasattr(task, "build_model"):  # a task that makes its model from another (a draft from its target)
        return task.build_model(dropout)
    from .scratch import encoder_config, is_scratch

    if is_scratch(base):  # a new encoder at random over the task tokenizer's (character) vocabulary
        return task.model_class().from_config(encoder_config(base, task.tok, dropout))

    from .models import resolve_model

    ref = resolve_model(base)
    config = AutoConfig.from_pretrained(ref.path)
    if labels is not None:
        config.num_labels = len(labels)
        config.id2label = dict(enumerate(labels))
        config.label2id = {label: i for i, label in enumerate(labels)}
    if config.pad_token_id is None and task.tok.pad_token_id is not None:
        config.pad_token_id = task.tok.pad_token_id  # decoder classifiers find the last token by it
    set_dropout(config, dropout)
    return task.model_class().from_pretrained(ref.path, config=config, dtype=torch.float32, use_safetensors=True)


def load_run(run_dir: str | Path):
    """(info, task, model in eval mode) of a finished run."""
    from .loading import tokenizer_from_folder
    from .tasks import make_task

    run_dir = Path(run_dir)
    info = read_run(run_dir)
    model_dir = run_dir / "model"
    tok = tokenizer_from_folder(model_dir)
    opts = info.get("task_options", {})
    task = make_task(info["task"], tok, labels=info.get("labels"), max_length=info["max_length"], **opts)
    if info["peft"] in PEFT_METHODS:
        from peft import PeftModel

        base = build_model(task, info["base_model"], info.get("labels"))
        model = PeftModel.from_pretrained(base, str(model_dir))
    else:
        model = task.model_class().from_pretrained(str(model_dir), use_safetensors=True)
    if opts.get("crf"):
        from .crf import load

        load(model, model_dir, len(info["labels"]))
    if info["task"] == "classify" and opts.get("ngram_features"):
        from .ngrams import load

        load(model, model_dir)
    return info, task, model.eval()


def save_model(model, tokenizer, folder: Path) -> None:
    """The model (or adapter) and tokenizer into `folder`, atomically, in safetensors."""

    def write(tmp: Path) -> None:
        model.save_pretrained(tmp, safe_serialization=True)
        from .added_layers import save_all

        save_all(model, tmp)  # an NER CRF, a classifier's n-gram table: their own files (kept out of HF weights)
        tokenizer.save_pretrained(tmp)

    write_atomic(folder, write)
