"""Taking a model out of spectune: `spectune merge` (a LoRA run folded into plain weights) and
`spectune export` (any run or model as a plain Hugging Face folder that transformers loads on its
own and vLLM can serve)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from .atomic import write_atomic
from .errors import SpectuneError
from .run import PEFT_METHODS, RUN_FILE, check_draft, load_run, read_run


def merge(run_dir: str, out: str) -> Path:
    """A LoRA run folded into a plain model folder (weights + tokenizer) transformers loads alone."""
    from .run import save_model

    info, task, model = load_run(run_dir)
    if info["peft"] not in PEFT_METHODS:
        raise SpectuneError(f"this run trained with --peft {info['peft']}: {Path(run_dir) / 'model'} is already a "
                            "plain model folder", where=str(run_dir))
    if info["peft"] != "lora":
        raise SpectuneError("prompt tuning adds virtual tokens that cannot be folded into the weights; "
                            "serve the run folder itself", where=str(run_dir))
    merged = model.merge_and_unload()
    save_model(merged, task.tok, Path(out))
    (Path(out) / "spectune-merged.json").write_text(json.dumps(
        {"from_run": str(Path(run_dir).resolve()), "task": info["task"], "labels": info.get("labels")}, indent=1))
    return Path(out)


def export(model: str, out: str, merge_lora: bool = False, draft: str | None = None) -> Path:
    """A run folder (any task) or a model spec (alias, .gguf, folder) -> a plain folder at `out`,
    with its distilled draft (`draft`, or RUN/draft when the run made one) as a plain folder in
    `out/draft`, ready to be a speculative model elsewhere."""
    dest = Path(out)
    if dest.exists():
        raise SpectuneError("already exists; choose a new folder (nothing is overwritten)", where=str(dest))
    run = Path(model)
    if draft is None and (run / "draft" / RUN_FILE).is_file():
        draft = str(run / "draft")
    if draft is not None:
        check_draft(draft, model)
    if not (run / RUN_FILE).is_file():  # a model spec: its plain (converted) folder, copied
        from .models import resolve_model

        source = Path(resolve_model(model).path)
        write_atomic(dest, lambda tmp: _copy(source, tmp, {"from_model": model}, draft))
        return dest
    info = read_run(run)
    if info["peft"] == "lora":
        if not merge_lora:
            raise SpectuneError("is a LoRA run: pass --merge-lora to fold the adapter into plain weights (or serve "
                                f"the adapter in {run / 'model'} with vLLM's --enable-lora)", where=str(run))
        merged = merge(model, out)
        if draft is not None:
            shutil.copytree(Path(draft) / "model", merged / "draft")
        return merged
    if info["peft"] in PEFT_METHODS:
        raise SpectuneError(f"--peft {info['peft']} adds virtual tokens that a plain folder cannot hold; serve the "
                            "run folder with `spectune serve`", where=str(run))
    meta = {"from_run": str(run.resolve()), "task": info["task"], "labels": info.get("labels")}
    if info.get("task_options", {}).get("crf"):  # transformers alone would decode per token, not the CRF's path
        meta["crf"] = ("crf.safetensors: CRF transitions [from, to], start and end scores over `labels`; decode "
                       "the token-classification logits of first sub-tokens with Viterbi to match spectune")
        if info["task_options"].get("ngram_features"):
            meta["crf"] += ("; add features.weight rows, the hashed n-grams of the first sub-tokens' ids "
                            "(spectune/crf.py, CRF.feature_ids), to those logits first")
    if info["task"] == "classify" and info.get("task_options", {}).get("ngram_features"):
        meta["ngrams"] = ("ngrams.safetensors: a table of hashed token-id 1-3-gram scores over `labels`; add "
                          "the rows of a text's n-grams over sqrt(count) (spectune/ngrams.py, NgramBag) to the "
                          "logits to match spectune")
    write_atomic(dest, lambda tmp: _copy(run / "model", tmp, meta, draft))
    return dest


def _copy(source: Path, tmp: Path, meta: dict, draft: str | None = None) -> None:
    shutil.copytree(source, tmp, dirs_exist_ok=True)
    if draft is not None:
        shutil.copytree(Path(draft) / "model", tmp / "draft")
        meta = {**meta, "draft": str(Path(draft).resolve())}
    (tmp / "spectune-export.json").write_text(json.dumps(meta, indent=1))
