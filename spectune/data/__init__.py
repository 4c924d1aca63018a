"""Readers for the files users bring. They know nothing of models or tasks' tensors."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from ..errors import SpectuneError


def read_lines(path: str | Path) -> Iterator[tuple[int, str]]:
    """(line number, text without the newline) for a UTF-8 text file; bad bytes name their line."""
    path = Path(path)
    if not path.is_file():
        raise SpectuneError("no such file", where=str(path))
    with open(path, "rb") as fh:
        for number, raw in enumerate(fh, start=1):
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise SpectuneError(f"not UTF-8 (byte {raw[e.start]:#04x} at column {e.start + 1}); "
                                    "save the file as UTF-8", where=f"{path}:{number}") from None
            if number == 1:
                text = text.removeprefix("\ufeff")  # a BOM from spreadsheet exports
            yield number, text.rstrip("\r\n")


def read_jsonl(path: str | Path, bad: list | None = None) -> Iterator[tuple[str, dict]]:
    """("file:line", object) for each non-blank line of a JSONL file of objects. A malformed line
    raises, or, when a `bad` list is given, is appended to it as a SpectuneError and skipped."""
    import json

    for number, line in read_lines(path):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            row = json.loads(line)
            if not isinstance(row, dict):
                raise SpectuneError("expected one JSON object per line", where=where)
        except (ValueError, SpectuneError) as e:
            error = e if isinstance(e, SpectuneError) else SpectuneError(f"invalid JSON ({e.msg})", where=where)
            if bad is None:
                raise error from None
            bad.append(error)
            continue
        yield where, row


def read_text(path: str | Path) -> str:
    """A whole UTF-8 file; bad bytes are reported with their line."""
    path = Path(path)
    if not path.is_file():
        raise SpectuneError("no such file", where=str(path))
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise SpectuneError(f"not UTF-8 (byte {raw[e.start]:#04x}); save the file as UTF-8",
                            where=f"{path}:{line}") from None


def require_rows(rows: list, path: str | Path, what: str) -> list:
    if not rows:
        raise SpectuneError(f"empty file: no {what} found", where=str(path))
    return rows
