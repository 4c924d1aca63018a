"""`spectune predict`: using a finished run on new texts (also the server's classify and NER)."""

from __future__ import annotations

import sys
from collections.abc import Iterator

from .data import read_lines
from .run import load_run
from .tasks import eval_features


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


class Predictor:
    """A finished run loaded once, answering batches of texts (the CLI's predict and the server)."""

    def __init__(self, run_dir: str):
        self.info, self.task, self.model = load_run(run_dir)
        self.kind = self.info["task"]
        self.generator = None
        if self.kind == "lm":
            from .generate import Generator

            self.generator = Generator.from_loaded(self.model, self.task.tok)

    def classify(self, texts: list[str], where: list[str] | None = None) -> list[dict]:
        from .data.tabular import LabelledText

        where = where or [f"input[{i}]" for i in range(len(texts))]
        rows = [LabelledText(t, self.task.labels[0], w) for t, w in zip(texts, where, strict=True)]
        out = []
        for text, probs in zip(texts, self.task.predict_proba(self.model, self.task.encode(rows)), strict=True):
            best = int(probs.argmax())
            out.append({"text": text, "label": self.task.labels[best], "probability": round(float(probs[best]), 6),
                        "probabilities": {lab: round(float(p), 6) for lab, p in zip(self.task.labels, probs,
                                                                                    strict=True)}})
        return out

    def ner(self, texts: list[str], where: list[str] | None = None) -> list[dict]:
        """Tokens are the text's whitespace-separated words, as in the training files' first column."""
        from .data.conll import Sentence

        where = where or [f"input[{i}]" for i in range(len(texts))]
        sents = [Sentence(t.split(), ["O"] * len(t.split()), w) for t, w in zip(texts, where, strict=True)]
        tags = self.task.predict(self.model, eval_features(self.task, sents), [len(s.tokens) for s in sents])
        return [{"tokens": s.tokens, "tags": t, "entities": entities(s.tokens, t, text)}
                for s, t, text in zip(sents, tags, texts, strict=True)]


def predict(run_dir: str, source: str, max_new_tokens: int = 64) -> Iterator[dict]:
    """One prediction per non-empty input line, as a JSON-ready dict."""
    p = Predictor(run_dir)
    for where, line in _inputs(source):
        if not line.strip():
            continue
        if p.kind == "ner":
            yield p.ner([line], [where])[0]
        elif p.kind == "classify":
            yield p.classify([line], [where])[0]
        else:
            yield {"prompt": line, "text": p.generator.generate(line, max_new_tokens=max_new_tokens).text}
