"""`spectune predict` and `spectune merge`: using a finished run."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path

from .data import read_lines
from .errors import SpectuneError
from .run import PEFT_METHODS, load_run


def entities(tokens: list[str], tags: list[str], line: str) -> list[dict]:
    """IOB2 tags -> entities with token and character spans in `line`."""
    starts, pos = [], 0
    for t in tokens:
        pos = line.index(t, pos)
        starts.append(pos)
        pos += len(t)
    found, i = [], 0
    while i < len(tags):
        if tags[i] == "O":
            i += 1
            continue
        kind, j = tags[i][2:], i + 1
        while j < len(tags) and tags[j] == f"I-{kind}":
            j += 1
        start, end = starts[i], starts[j - 1] + len(tokens[j - 1])
        found.append({"type": kind, "text": line[start:end], "start": start, "end": end, "tokens": [i, j]})
        i = j
    return found


def _inputs(source: str) -> Iterator[tuple[str, str]]:
    if source == "-":
        for number, line in enumerate(sys.stdin, start=1):
            yield f"<stdin>:{number}", line.rstrip("\r\n")
    else:
        for number, line in read_lines(source):
            yield f"{source}:{number}", line


def predict(run_dir: str, source: str, max_new_tokens: int = 64) -> Iterator[dict]:
    """One prediction per non-empty input line, as a JSON-ready dict."""
    info, task, model = load_run(run_dir)
    gen = None
    if info["task"] == "lm":
        from .generate import Generator

        gen = Generator.from_loaded(model, task.tok)
    for where, line in _inputs(source):
        if not line.strip():
            continue
        if info["task"] == "ner":
            from .data.conll import Sentence

            s = Sentence(line.split(), ["O"] * len(line.split()), where)
            tags = task.predict(model, task.encode([s]), [len(s.tokens)])[0]
            yield {"tokens": s.tokens, "tags": tags, "entities": entities(s.tokens, tags, line)}
        elif info["task"] == "classify":
            from .data.tabular import LabelledText

            probs = task.predict_proba(model, task.encode([LabelledText(line, task.labels[0], where)]))[0]
            best = int(probs.argmax())
            yield {"text": line, "label": task.labels[best], "probability": round(float(probs[best]), 6),
                   "probabilities": {lab: round(float(p), 6) for lab, p in zip(task.labels, probs, strict=True)}}
        else:
            yield {"prompt": line, "text": gen.generate(line, max_new_tokens=max_new_tokens).text}


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
