"""Masked-LM pre-training of a scratch encoder, and the CRF output layer for NER.

The CRF's likelihood and Viterbi path are checked against brute force over every tag sequence;
pre-training must lower the masked-LM loss (it fails if training does nothing); a CRF run saves,
reloads, and resumes exactly like any other run."""

import itertools
import json
import math

import pytest
import tiny
import torch
from safetensors.torch import load_file

from spectune.cli import main
from spectune.config import TrainConfig, build
from spectune.crf import CRF
from spectune.errors import SpectuneError
from spectune.run import load_run
from spectune.train import train


@pytest.fixture(scope="module")
def ner_data(tmp_path_factory):
    return tiny.write_ner(tmp_path_factory.mktemp("ner"))


def random_crf(num_tags: int, seed: int = 0) -> CRF:
    torch.manual_seed(seed)
    crf = CRF(num_tags)
    with torch.no_grad():
        for p in crf.parameters():
            p.normal_()
    return crf


def test_crf_likelihood_and_viterbi_equal_brute_force():
    L, lengths = 3, [4, 2, 1]
    crf = random_crf(L)
    em = torch.randn(len(lengths), max(lengths), L)  # (B, W, L)
    mask = torch.tensor([[i < n for i in range(max(lengths))] for n in lengths])
    paths = crf.decode(em, mask)
    for b, n in enumerate(lengths):
        scores = {}
        for tags in itertools.product(range(L), repeat=n):
            s = crf.start[tags[0]] + crf.end[tags[-1]] + sum(em[b, i, t] for i, t in enumerate(tags))
            s = s + sum(crf.transitions[tags[i - 1], tags[i]] for i in range(1, n))
            scores[tags] = float(s)
        assert tuple(paths[b]) == max(scores, key=scores.get)
        gold = list(next(iter(scores)))
        tags = torch.tensor([gold + [0] * (max(lengths) - n)])
        nll = float(crf.nll(em[b:b + 1], tags, mask[b:b + 1]))
        log_z = torch.logsumexp(torch.tensor(list(scores.values())), 0)
        assert nll == pytest.approx(float(log_z) - scores[tuple(gold)], abs=1e-4)


def test_crf_features_see_the_word_window_only():
    crf = CRF(3, feature_buckets=1 << 20)
    ids = torch.tensor([[5, 6, 7, 8, 9, 10], [5, 6, 7, 0, 0, 0]])  # row 1: 3 words, then padding
    mask = torch.tensor([[True] * 6, [True] * 3 + [False] * 3])
    f = crf.feature_ids(ids, mask)  # (B, W, 9)
    assert f.shape == (2, 6, 9) and torch.equal(crf.feature_ids(ids[1:, :3], mask[1:, :3]), f[1:, :3])  # padding-free
    assert torch.equal(f[0, 0], f[1, 0]) and not torch.equal(f[0, 1], f[1, 1])  # word 1 sees word 3, or the end
    changed = ids.clone()
    changed[0, 5] = 11  # 3 words after word 2: outside its window, inside word 3's and 4's
    g = crf.feature_ids(changed, mask)
    assert torch.equal(g[0, :3], f[0, :3]) and not torch.equal(g[0, 3], f[0, 3])
    # Templates hash apart; only "2 before" of words 0-1 and "2 after" of words 4-5 are the same feature.
    assert len(set(f[0].flatten().tolist())) == 6 * 9 - 2
    em = torch.randn(2, 6, 3)
    assert torch.equal(crf.emissions(em, ids, mask), em)  # the table starts at zero: an unseen n-gram adds nothing


@pytest.mark.parametrize("features", [0, 4096])
def test_crf_run_saves_reloads_and_scores_the_same(tmp_path, tiny_bert_dir, ner_data, features):
    cfg = build(TrainConfig, {"task": "ner", "crf": True, "model": str(tiny_bert_dir), "train": str(ner_data["train"]),
                              "dev": str(ner_data["dev"]), "test": str(ner_data["test"]), "out": str(tmp_path / "run"),
                              "epochs": 3, "batch_size": 8, "lr": 1e-2, "quiet": True, "ngram_features": features})
    info = train(cfg)
    model_dir = tmp_path / "run/model"
    assert not any(k.startswith("crf.") for k in load_file(model_dir / "model.safetensors"))  # HF weights stay HF
    crf = load_file(model_dir / "crf.safetensors")
    assert crf["transitions"].shape == (4, 4) and crf["transitions"].abs().sum() > 0  # it trained
    if features:
        assert crf["features.weight"].shape == (features, 4) and crf["features.weight"].abs().sum() > 0
    else:
        assert "features.weight" not in crf
    _, task, model = load_run(tmp_path / "run")
    assert torch.equal(model.crf.transitions, crf["transitions"])
    assert features == 0 or torch.equal(model.crf.features.weight, crf["features.weight"])
    assert main(["eval", "--model", str(tmp_path / "run"), "--data", str(ner_data["test"]), "--json",
                 str(tmp_path / "again.json")]) == 0
    again = json.loads((tmp_path / "again.json").read_text())
    assert again["entity"]["f1"] == info["test"]["entity_f1"]
    # Viterbi never outputs an I- tag after O: the learnt transitions keep entities well formed.
    sents = task.read(ner_data["test"], "test")
    pred = task.predict(model, task.encode(sents), [len(s.tokens) for s in sents])
    assert not any(a == "O" and b.startswith("I-") for tags in pred for a, b in itertools.pairwise(tags))


@pytest.mark.parametrize("arch", ["bert", "convbert", "modernbert"])
def test_mlm_pretraining_from_scratch_then_crf_fine_tuning(tmp_path, ner_data, arch):
    pre = tmp_path / "pre"
    info = train(build(TrainConfig, {"task": "mlm", "model": f"scratch:{arch}-L2-H64-A2",
                                     "train": str(ner_data["train"]), "dev": str(ner_data["dev"]), "out": str(pre),
                                     "epochs": 6, "batch_size": 8, "max_length": 64, "lr": 3e-3, "quiet": True}))
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(pre / "model")
    # An untrained model scores about ln(vocabulary) on masked tokens; training must get well below.
    assert info["best"]["metric"] == "loss" and info["best"]["value"] < math.log(len(tok)) - 0.3
    assert tok.convert_ids_to_tokens(tok("dog fox Q").input_ids) == ["[CLS]", "d", "o", "g", "f", "o", "x", "[UNK]",
                                                                       "[SEP]"]
    assert main(["train", "--task", "ner", "--crf", "--model", str(pre / "model"), "--train", str(ner_data["train"]),
                 "--dev", str(ner_data["dev"]), "--out", str(tmp_path / "ner"), "--epochs", "1", "--lr", "1e-3",
                 "--quiet"]) == 0
    assert (tmp_path / "ner/model/crf.safetensors").is_file()


@pytest.mark.parametrize("values, field", [({"task": "ner", "model": "scratch:bert"}, "model"),
                                           ({"task": "mlm", "model": "scratch:bert", "peft": "lora"}, "peft"),
                                           ({"task": "classify", "model": "x", "crf": True}, "crf"),
                                           ({"task": "ner", "model": "x", "ngram_features": 64}, "ngram_features"),
                                           ({"task": "lm", "model": "x", "ngram_features": 64}, "ngram_features")])
def test_option_mistakes_are_named(values, field, tmp_path):
    with pytest.raises(SpectuneError) as e:
        build(TrainConfig, {"train": "t", "out": str(tmp_path), **values})
    assert e.value.where == field


def test_a_bad_scratch_spec_is_one_line(tmp_path, ner_data, capsys):
    assert main(["train", "--task", "mlm", "--model", "scratch:gpt-L2", "--train", str(ner_data["train"]),
                 "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "expected scratch:ARCH[-L<layers>]" in err and "Traceback" not in err
