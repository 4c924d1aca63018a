"""Texts with one label each: CSV, TSV or JSONL, with configurable column names."""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path

from ..errors import SpectuneError
from . import read_jsonl, read_text, require_rows


@dataclass
class LabelledText:
    text: str
    label: str
    where: str


def read_labelled(path: str | Path, text_column: str = "text", label_column: str = "label") -> list[LabelledText]:
    path = Path(path)
    if path.suffix in (".jsonl", ".json"):
        rows = read_jsonl(path)
    elif path.suffix in (".csv", ".tsv"):
        rows = _delimited_rows(path, "\t" if path.suffix == ".tsv" else ",")
    else:
        raise SpectuneError("expected a .csv, .tsv or .jsonl file of texts and labels", where=str(path))
    out = []
    for where, row in rows:
        missing = [c for c in (text_column, label_column) if c not in row]
        if missing:
            raise SpectuneError(f"no column {missing[0]!r}; columns found: {', '.join(map(str, row)) or 'none'} "
                                "(set --text-column / --label-column)", where=where)
        text, label = row[text_column], row[label_column]
        if text is None or not str(text).strip():
            raise SpectuneError(f"empty {text_column!r}", where=where)
        if label is None or str(label).strip() == "":
            raise SpectuneError(f"empty {label_column!r}", where=where)
        out.append(LabelledText(str(text), str(label).strip(), where))
    return require_rows(out, path, "labelled texts")


def _delimited_rows(path: Path, delimiter: str):
    # csv reads the text itself so that quoted fields may span lines; line_num names the row's end.
    reader = csv.reader(io.StringIO(read_text(path), newline=""), delimiter=delimiter)
    header = None
    for cells in reader:
        if not cells or all(not c.strip() for c in cells):
            continue
        if header is None:
            header = [c.strip() for c in cells]
            continue
        where = f"{path}:{reader.line_num}"
        if len(cells) != len(header):
            raise SpectuneError(f"expected {len(header)} fields like the header, found {len(cells)}", where=where)
        yield where, dict(zip(header, cells, strict=True))
