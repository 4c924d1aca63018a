"""Causal-LM training data: JSONL prompt/response pairs, JSONL chats, or plain text.

- `{"prompt": ..., "response": ...}`: the loss is on the response only;
- `{"messages": [{"role": ..., "content": ...}, ...]}`: the loss is on assistant turns only;
- a `.txt` file: continued pre-training on raw text, every token trained; blank lines separate
  documents.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..errors import SpectuneError
from . import read_jsonl, read_lines, require_rows

ROLES = ("system", "user", "assistant", "tool")


@dataclass
class LMExample:
    messages: list[dict] = field(default_factory=list)  # chat form (prompt/response become 2 turns)
    text: str | None = None  # raw text document
    where: str = ""


def read_lm(path: str | Path) -> list[LMExample]:
    path = Path(path)
    if path.suffix == ".txt":
        docs, current, start = [], [], 1
        for number, line in read_lines(path):
            if line.strip():
                if not current:
                    start = number
                current.append(line)
            elif current:
                docs.append(LMExample(text="\n".join(current), where=f"{path}:{start}"))
                current = []
        if current:
            docs.append(LMExample(text="\n".join(current), where=f"{path}:{start}"))
        return require_rows(docs, path, "text")
    if path.suffix not in (".jsonl", ".json"):
        raise SpectuneError("expected .jsonl (prompt/response or messages) or .txt (raw text)", where=str(path))
    out = [LMExample(messages=_messages(row, where), where=where) for where, row in read_jsonl(path)]
    return require_rows(out, path, "examples")


def _messages(row, where: str) -> list[dict]:
    if isinstance(row, dict) and "messages" in row:
        msgs = row["messages"]
        if not isinstance(msgs, list) or not msgs:
            raise SpectuneError("'messages' must be a non-empty list", where=where)
        for i, m in enumerate(msgs):
            if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
                raise SpectuneError(f"messages[{i}] must be {{'role': one of {', '.join(ROLES)}, 'content': "
                                    "string}", where=where)
        if not any(m["role"] == "assistant" for m in msgs):
            raise SpectuneError("no assistant turn: nothing to learn from this chat", where=where)
        return msgs
    if isinstance(row, dict) and isinstance(row.get("prompt"), str) and isinstance(row.get("response"), str):
        if not row["response"].strip():
            raise SpectuneError("empty 'response'", where=where)
        return [{"role": "user", "content": row["prompt"]}, {"role": "assistant", "content": row["response"]}]
    found = ", ".join(row) if isinstance(row, dict) else type(row).__name__
    raise SpectuneError(f'expected {{"prompt", "response"}} or {{"messages"}}; found: {found}', where=where)
