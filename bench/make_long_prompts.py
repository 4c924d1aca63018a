"""Writes bench/long-context.jsonl: two prompts of about 2,500 tokens for the decoding benchmark's
long-context run (`python bench/decode.py --prompts bench/long-context.jsonl --per-kind 2`).

The document is a question-and-answer sheet built from the English dialogues of the pinned
chatterbot-corpus package (science, history, computers, ai, literature, sports: each dialogue's
first question and its answer, in the corpus's order), real text no model here was tuned on; the
questions ask for an answer quoted from it (retrieval over a long context) and for the answers on one
subject. Kept as a script so the set is reviewable and reproducible: python bench/make_long_prompts.py
"""

import json
from pathlib import Path

import yaml

from spectune.data.corpora import package_dir

TOPICS = ("science", "history", "computers", "ai", "literature", "sports")


def sheet(max_chars: int = 10_000) -> str:
    root = package_dir("chatterbot_corpus", "chatterbot-corpus==1.3.3") / "data" / "english"
    lines = []
    for topic in TOPICS:
        for dialogue in yaml.safe_load((root / f"{topic}.yml").read_text())["conversations"]:
            if len(dialogue) >= 2 and isinstance(dialogue[0], str) and isinstance(dialogue[1], str):
                lines.append(f"Q: {dialogue[0].strip()}\nA: {dialogue[1].strip()}")
    text = ""
    for line in lines:
        if len(text) + len(line) > max_chars:
            break
        text += line + "\n\n"
    return text.strip()


def rows():
    doc = sheet()
    yield {"kind": "long-context", "id": "long-0",
           "messages": [{"role": "system", "content": "Answer using only the document, quoting it."},
                        {"role": "user", "content": f"{doc}\n\nIn the sheet above, what is the answer to the "
                                                    "question 'what is a wavelength'? Then quote the two "
                                                    "questions that follow it and their answers."}]}
    yield {"kind": "long-context", "id": "long-1",
           "messages": [{"role": "user", "content": f"{doc}\n\nList every question of the sheet above that is "
                                                    "about computers, each with its answer, word for word."}]}


if __name__ == "__main__":
    out = Path(__file__).with_name("long-context.jsonl")
    out.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows()))
    print(f"written {out}")
