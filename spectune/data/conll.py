"""Token-tagged sentences: CoNLL files as users bring them, and JSONL {"tokens", "tags"}.

CoNLL: one token per line, columns separated by whitespace (tabs when present), the tag in the
last column; blank lines end sentences; `-DOCSTART-` lines are skipped. Tags may follow IOB1,
IOB2 or BIOES: we say which was found and work in IOB2 internally (entity spans are unchanged).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import SpectuneError
from . import read_jsonl, read_lines, require_rows

TAG = re.compile(r"^(O|[BIES]-\S+)$")


@dataclass
class Sentence:
    tokens: list[str]
    tags: list[str]
    where: str  # file:line of its first token, for errors found later (unknown labels)


def read_tagged(path: str | Path) -> tuple[list[Sentence], str]:
    """Sentences in IOB2 and the scheme the file used (IOB1, IOB2, BIOES)."""
    path = Path(path)
    sents = _read_jsonl(path) if path.suffix in (".jsonl", ".json") else _read_conll(path)
    require_rows(sents, path, "tagged sentences")
    scheme = detect_scheme([s.tags for s in sents])
    for s in sents:
        s.tags = to_iob2(s.tags)
    return sents, scheme


def _read_conll(path: Path) -> list[Sentence]:
    sents: list[Sentence] = []
    tokens: list[str] = []
    tags: list[str] = []
    ncols, start = None, 0
    for number, line in read_lines(path):
        if not line.strip() or line.startswith("-DOCSTART-"):
            if tokens:
                sents.append(Sentence(tokens, tags, f"{path}:{start}"))
                tokens, tags = [], []
            continue
        cols = line.split("\t") if "\t" in line else line.split()
        cols = [c.strip() for c in cols]
        if ncols is None:
            ncols = len(cols)
            if ncols < 2:
                raise SpectuneError("expected at least 2 columns (token ... tag), found 1", where=f"{path}:{number}")
        if len(cols) != ncols:
            raise SpectuneError(f"expected {ncols} columns like the first line, found {len(cols)}",
                                where=f"{path}:{number}")
        if not cols[-1] or not cols[0]:
            raise SpectuneError("empty token or tag", where=f"{path}:{number}")
        if not TAG.match(cols[-1]):
            raise SpectuneError(f"tag {cols[-1]!r} is not O, B-X, I-X, E-X or S-X", where=f"{path}:{number}")
        if not tokens:
            start = number
        tokens.append(cols[0])
        tags.append(cols[-1])
    if tokens:
        sents.append(Sentence(tokens, tags, f"{path}:{start}"))
    return sents


def _read_jsonl(path: Path) -> list[Sentence]:
    sents = []
    for where, row in read_jsonl(path):
        if not all(isinstance(row.get(k), list) for k in ("tokens", "tags")):
            raise SpectuneError('expected {"tokens": [...], "tags": [...]}', where=where)
        if len(row["tokens"]) != len(row["tags"]) or not row["tokens"]:
            raise SpectuneError(f"{len(row['tokens'])} tokens but {len(row['tags'])} tags", where=where)
        bad = [t for t in row["tags"] if not isinstance(t, str) or not TAG.match(t)]
        if bad:
            raise SpectuneError(f"tag {bad[0]!r} is not O, B-X, I-X, E-X or S-X", where=where)
        sents.append(Sentence([str(t) for t in row["tokens"]], list(row["tags"]), where))
    return sents


def detect_scheme(tag_lists: list[list[str]]) -> str:
    """BIOES if E-/S- appear; IOB1 if some entity starts with I-; else IOB2."""
    iob1 = False
    for tags in tag_lists:
        prev = "O"
        for t in tags:
            if t[:2] in ("E-", "S-"):
                return "BIOES"
            if t.startswith("I-") and (prev == "O" or prev[2:] != t[2:]):
                iob1 = True
            prev = t
    return "IOB1" if iob1 else "IOB2"


def to_iob2(tags: list[str]) -> list[str]:
    """Any scheme to IOB2: S- -> B-, E- -> I-, and an I- that starts an entity -> B-."""
    out, prev = [], "O"
    for t in tags:
        t = "B-" + t[2:] if t.startswith("S-") else "I-" + t[2:] if t.startswith("E-") else t
        if t.startswith("I-") and (prev == "O" or prev[2:] != t[2:]):
            t = "B-" + t[2:]
        out.append(t)
        prev = t
    return out
