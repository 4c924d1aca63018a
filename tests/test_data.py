"""Readers and encoders: formats users bring, label alignment, and one-line errors for bad files."""

import json

import pytest
import tiny
import torch

from spectune.data.chat import read_lm
from spectune.data.conll import detect_scheme, read_tagged, to_iob2
from spectune.data.tabular import read_labelled
from spectune.errors import SpectuneError
from spectune.loading import tokenizer_from_folder
from spectune.tasks import make_task


@pytest.fixture(scope="module")
def wordpiece():
    return tokenizer_from_folder(tiny.TINY_WORDPIECE)


@pytest.fixture(scope="module")
def bpe():
    return tokenizer_from_folder(tiny.TINY_BPE)


def write(tmp_path, name, text, mode="w"):
    p = tmp_path / name
    (p.write_bytes if "b" in mode else p.write_text)(text)
    return p


@pytest.mark.parametrize("tags, scheme, iob2", [
    (["B-PER", "I-PER", "O", "B-LOC"], "IOB2", ["B-PER", "I-PER", "O", "B-LOC"]),
    (["I-PER", "I-PER", "B-PER", "O", "I-LOC"], "IOB1", ["B-PER", "I-PER", "B-PER", "O", "B-LOC"]),
    (["B-PER", "E-PER", "S-LOC", "O", "S-LOC"], "BIOES", ["B-PER", "I-PER", "B-LOC", "O", "B-LOC"]),
])
def test_schemes_are_detected_and_normalised(tags, scheme, iob2):
    assert detect_scheme([tags]) == scheme and to_iob2(tags) == iob2


def test_conll_with_docstart_and_four_columns(tmp_path):
    f = write(tmp_path, "a.conll", "-DOCSTART- -X- -X- O\n\nEU NNP B-NP I-ORG\nrejects VBZ B-VP O\n"
                                   "German JJ B-NP I-MISC\n\nPeter NNP B-NP I-PER\nBlackburn NNP I-NP I-PER\n")
    sents, scheme = read_tagged(f)
    assert scheme == "IOB1" and [s.tokens for s in sents] == [["EU", "rejects", "German"], ["Peter", "Blackburn"]]
    assert sents[0].tags == ["B-ORG", "O", "B-MISC"] and sents[1].tags == ["B-PER", "I-PER"]
    j = write(tmp_path, "a.jsonl", json.dumps({"tokens": ["New", "York"], "tags": ["B-LOC", "I-LOC"]}) + "\n")
    assert read_tagged(j)[0][0].tags == ["B-LOC", "I-LOC"]


@pytest.mark.parametrize("name, content, expected", [
    ("cols.conll", "EU NNP B-ORG\nrejects O\n", r"cols.conll:2: expected 3 columns like the first line, found 2"),
    ("tag.conll", "EU B-ORG\nrejects PERSON\n", r"tag.conll:2: tag 'PERSON' is not O, B-X"),
    ("empty.conll", "\n\n", r"empty.conll: empty file"),
    ("one.conll", "EU\n", r"one.conll:1: expected at least 2 columns"),
    ("bad.jsonl", '{"tokens": ["a"], "tags": ["O", "O"]}\n', r"bad.jsonl:1: 1 tokens but 2 tags"),
    ("broken.jsonl", '{"tokens": \n', r"broken.jsonl:1: invalid JSON"),
])
def test_bad_tagged_files(tmp_path, name, content, expected):
    with pytest.raises(SpectuneError, match=expected):
        read_tagged(write(tmp_path, name, content))


def test_non_utf8_names_the_line(tmp_path):
    f = write(tmp_path, "latin.conll", "Paris B-LOC\nS\xe3o B-LOC\n".encode("latin-1"), mode="wb")
    with pytest.raises(SpectuneError, match=r"latin.conll:2: not UTF-8"):
        read_tagged(f)


def test_label_alignment_round_trips_to_word_labels(tmp_path, wordpiece):
    """Words split into several sub-tokens: the label sits on the first piece, -100 on the rest,
    and reading predictions back per word returns exactly the word labels."""
    f = write(tmp_path, "s.conll", "unbelievably B-MISC\nxyz I-MISC\nthe O\nParis B-LOC\njumps O\n")
    task = make_task("ner", wordpiece, max_length=64)
    sents = task.read(f)
    feats = task.encode(sents)
    assert len(feats) == 1
    ids, labels = feats[0]["input_ids"], feats[0]["labels"]
    assert ids[0] == wordpiece.cls_token_id and ids[-1] == wordpiece.sep_token_id
    pieces = [wordpiece.convert_ids_to_tokens(i) for i in ids]
    first = [p for p, lab in zip(pieces, labels, strict=True) if lab != -100]
    assert first == ["u", "x", "the", "paris", "jumps"]
    assert [task.labels[lab] for lab in labels if lab != -100] == sents[0].tags
    assert labels.count(-100) == len(ids) - 5  # specials and continuation pieces

    gold = task.collate(feats)["labels"]  # (1, T), -100 off the first pieces
    wrong = torch.where(gold == -100, len(task.labels) - 1, gold)  # a wrong label on every other piece

    class Oracle(torch.nn.Module):
        def forward(self, input_ids, attention_mask):
            return type("Out", (), {"logits": torch.nn.functional.one_hot(wrong, len(task.labels)).float()})

    assert task.predict(Oracle(), feats, [5]) == [sents[0].tags]


def test_long_sentences_are_windowed_not_truncated(tmp_path, wordpiece):
    words = ["unbelievably", "the", "paris", "xyz"] * 10
    f = write(tmp_path, "long.conll", "".join(f"{w} O\n" for w in words))
    task = make_task("ner", wordpiece, max_length=16)
    feats = task.encode(task.read(f))
    assert len(feats) > 1 and all(len(x["input_ids"]) <= 16 for x in feats)
    covered = [w for x in feats for _, w in x["first"]]
    assert covered == list(range(len(words)))  # every word once, in order


def test_evaluation_windows_overlap_and_each_word_is_read_from_its_most_central_window(tmp_path, wordpiece):
    """For evaluation and prediction a long sentence's windows overlap by half; each word is owned by
    exactly one window, the one where it sits farther from a cut, and the prediction is read there."""
    import torch

    from spectune.tasks import eval_features

    words = ["unbelievably", "the", "paris", "xyz"] * 10
    tags = ["B-LOC" if w == "paris" else "O" for w in words]
    f = write(tmp_path, "long.conll", "".join(f"{w} {t}\n" for w, t in zip(words, tags, strict=True)))
    task = make_task("ner", wordpiece, max_length=16)
    sents = task.read(f)
    plain, feats = task.encode(sents), eval_features(task, sents)
    assert len(feats) > len(plain) and all(len(x["input_ids"]) <= 16 for x in feats)
    spans = [(x["first"][0][1], x["first"][-1][1] + 1) for x in feats]  # words each window sees
    assert all(b[0] < a[1] for a, b in zip(spans, spans[1:], strict=False))  # consecutive windows overlap
    owned = [w for x in feats for w in range(*x["owned"])]
    assert owned == list(range(len(words)))  # every word owned once, in order

    def room(w, a, b):  # words between w and the nearest cut of window [a, b) (a sentence end is no cut)
        return min(w - a if a > 0 else len(words), b - 1 - w if b < len(words) else len(words))

    for x, (a, b) in zip(feats, spans, strict=True):  # an owned word has (within one) the most room here
        for w in range(*x["owned"]):
            assert a <= w < b and all(room(w, a, b) >= room(w, c, d) - 1 for c, d in spans if c <= w < d)

    class Gold(torch.nn.Module):  # right where a word is owned, wrong elsewhere
        def forward(self, input_ids, attention_mask):
            logits = torch.zeros(*input_ids.shape, len(task.labels))
            logits[..., task.labels.index("B-LOC")] = 1.0  # wrong for most words...
            for row, x in enumerate(self.chunk):
                for pos, w in x["first"]:
                    if x["owned"][0] <= w < x["owned"][1]:
                        logits[row, pos] = 0.0
                        logits[row, pos, task.labels.index(tags[w])] = 2.0
            return type("Out", (), {"logits": logits})

    model = Gold()
    model.chunk = feats
    assert task.predict(model, feats, [len(words)], batch_size=len(feats)) == [tags]


def test_unseen_dev_label_is_named(tmp_path, wordpiece):
    task = make_task("ner", wordpiece)
    task.read(write(tmp_path, "train.conll", "Paris B-LOC\nis O\n"))
    with pytest.raises(SpectuneError, match=r"dev.conll:1: label 'B-ORG' in the dev file never occurs"):
        task.read(write(tmp_path, "dev.conll", "ACME B-ORG\n"), "dev")


def test_tabular_columns_and_errors(tmp_path):
    rows = read_labelled(write(tmp_path, "a.csv", 'text,label\n"good, very good",pos\nbad,neg\n'))
    assert [(r.text, r.label) for r in rows] == [("good, very good", "pos"), ("bad", "neg")]
    rows = read_labelled(write(tmp_path, "m.csv", 'text,label\n"two\nlines",a\nbad,b\n'))
    assert [r.text for r in rows] == ["two\nlines", "bad"] and rows[1].where.endswith("m.csv:4")
    with pytest.raises(SpectuneError, match=r"m.csv:4: expected 2 fields"):
        read_labelled(write(tmp_path, "m.csv", 'text,label\n"two\nlines",a\nbad,x,y\n'))
    rows = read_labelled(write(tmp_path, "a.tsv", "review\tstars\ngreat\t5\n"), "review", "stars")
    assert rows[0].label == "5"
    with pytest.raises(SpectuneError, match=r"b.csv:2: no column 'text'; columns found: review, label"):
        read_labelled(write(tmp_path, "b.csv", "review,label\ngood,pos\n"))
    with pytest.raises(SpectuneError, match=r"c.jsonl:2: empty 'label'"):
        read_labelled(write(tmp_path, "c.jsonl", '{"text": "a", "label": "x"}\n{"text": "b", "label": ""}\n'))
    with pytest.raises(SpectuneError, match=r"d.csv:2: expected 2 fields like the header, found 3"):
        read_labelled(write(tmp_path, "d.csv", "text,label\na,b,c\n"))


def test_chat_loss_only_on_assistant_turns(tmp_path, bpe):
    chat = {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello!"},
                         {"role": "assistant", "content": "How can I help?"},
                         {"role": "user", "content": "reset my password"},
                         {"role": "assistant", "content": "Done."}]}
    f = write(tmp_path, "c.jsonl", json.dumps(chat) + "\n" + json.dumps({"prompt": "Hi", "response": "Hello"}) + "\n")
    task = make_task("lm", bpe, max_length=256)
    feats = task.encode(read_lm(f))
    whole = bpe.apply_chat_template(chat["messages"], tokenize=False)
    assert bpe.decode(feats[0]["input_ids"]) == whole
    trained = [i for i, lab in zip(feats[0]["input_ids"], feats[0]["labels"], strict=True) if lab != -100]
    assert bpe.decode(trained) == "How can I help?<|im_end|>\nDone.<|im_end|>\n"
    trained = [i for i, lab in zip(feats[1]["input_ids"], feats[1]["labels"], strict=True) if lab != -100]
    assert bpe.decode(trained) == "Hello<|im_end|>\n"


def test_raw_text_is_packed_into_blocks(tmp_path, bpe):
    f = write(tmp_path, "book.txt", ("The quick brown fox jumps over the lazy dog. " * 30 + "\n\n") * 3)
    task = make_task("lm", bpe, max_length=32)
    feats = task.encode(read_lm(f))
    assert all(len(x["input_ids"]) == 32 for x in feats[:-1]) and feats[0]["labels"] == feats[0]["input_ids"]
    assert sum(x["input_ids"].count(bpe.eos_token_id) for x in feats) == 3  # documents kept apart by EOS


def test_lm_bad_rows(tmp_path):
    with pytest.raises(SpectuneError, match=r"x.jsonl:1: expected \{\"prompt\", \"response\"\} or \{\"messages\"\}; "
                                            r"found: question, answer"):
        read_lm(write(tmp_path, "x.jsonl", '{"question": "q", "answer": "a"}\n'))
    with pytest.raises(SpectuneError, match="no assistant turn"):
        read_lm(write(tmp_path, "y.jsonl", '{"messages": [{"role": "user", "content": "hi"}]}\n'))
