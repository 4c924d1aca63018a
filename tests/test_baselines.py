"""The classical baselines run end to end on tiny data and beat chance, with our report format."""

import tiny

from spectune.baselines import char_features, crf_ner, tfidf_classifier
from spectune.data.conll import read_tagged
from spectune.data.tabular import read_labelled


def test_char_window_features():
    f = char_features(list("北京市"), 0)
    assert f["u0"] == "北" and f["u-1"] == "<s>" and f["b0"] == "北京" and f["u2"] == "市"


def test_crf_baseline_learns_tiny_ner(tmp_path):
    paths = tiny.write_ner(tmp_path)
    sents = {k: read_tagged(p)[0] for k, p in paths.items()}
    r = crf_ner(sents["train"], sents["dev"], sents["test"], max_iterations=50)
    assert r["test"]["entity"]["f1"] > 0.9 and "token_report" in r["test"]


def test_tfidf_baseline_learns_tiny_classification(tmp_path):
    paths = tiny.write_classify(tmp_path)
    rows = {k: read_labelled(p) for k, p in paths.items()}
    r = tfidf_classifier(rows["train"], rows["dev"], rows["test"])
    assert r["test"]["accuracy"] > 0.8 and r["C"] in (0.3, 1.0, 3.0, 10.0)
