"""`spectune models list`: the embedded models and every conversion in the cache."""

from __future__ import annotations

from pathlib import Path

from .errors import SpectuneError
from .gguf_convert import cached_entries, file_sha256, gguf_params, read_gguf
from .models import ALIASES, alias_source, check_folder, safetensors_stats


def list_models() -> list[dict]:
    """One row per model: name, kind, params, dtype, where it lives, size on disk."""
    rows, seen = [], set()
    entries = cached_entries()
    for alias in ALIASES.values():
        try:
            src = alias_source(alias)
        except SpectuneError as e:
            rows.append(_row(alias.name, alias.kind, None, "-", None, 0, status=str(e)))
            continue
        if src.suffix != ".gguf":
            n, dtype, size = safetensors_stats(src)
            rows.append(_row(alias.name, alias.kind, n, dtype, src, size, status="ready (in package)"))
            continue
        sha = file_sha256(src)
        mine = [(d, info) for d, info in entries if info.get("sha256") == sha]
        for d, info in mine:
            seen.add(d)
            rows.append(_row(alias.name, alias.kind, info.get("params"), info.get("dtype"), d,
                             _du(d), status="ready"))
        if not mine:
            n = gguf_params(read_gguf(src))
            rows.append(_row(alias.name, alias.kind, n, "-", None, 0,
                             status=f"not prepared (run: spectune models prepare {alias.name})"))
    for d, info in entries:
        if d not in seen:
            try:
                kind = check_folder(d)
            except SpectuneError:
                kind = "unknown"
            rows.append(_row(Path(info.get("source", d.name)).name, kind, info.get("params"),
                             info.get("dtype"), d, _du(d), status="ready (converted GGUF)"))
    return rows


def _row(name, kind, params, dtype, where, size, status) -> dict:
    return {"name": name, "kind": kind, "params": params, "dtype": dtype,
            "cached": str(where) if where else None, "size_bytes": size, "status": status}


def _du(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def format_table(rows: list[dict]) -> str:
    def human(n: float | None, unit: str) -> str:
        if not n:
            return "-"
        for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
            if n >= scale:
                return f"{n / scale:.1f}{suffix}{unit}"
        return f"{n:.0f}{unit}"

    head = ["model", "kind", "params", "dtype", "size", "where / status"]
    body = [[r["name"], r["kind"], human(r["params"], ""), r["dtype"] or "-", human(r["size_bytes"], "B"),
             r["cached"] or r["status"]] for r in rows]
    widths = [max(len(str(x)) for x in col) for col in zip(head, *body, strict=False)]
    lines = ["  ".join(str(x).ljust(w) for x, w in zip(line, widths, strict=True)).rstrip()
             for line in [head, *body]]
    return "\n".join(lines)
