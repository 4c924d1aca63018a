"""Hashed n-gram tables added to a model's scores (`--ngram-features`, spectune/ngrams.py).

The classifier's table is checked against a brute-force sum of its rows; a run with the encoder
held still (lr 0) must learn the task from the table alone (it fails if the table trains nothing);
and the table saves, reloads and scores the same through `spectune eval`."""

import json

import pytest
import tiny
import torch
from safetensors.torch import load_file

from spectune.added_layers import FILES
from spectune.cli import main
from spectune.config import TrainConfig, build
from spectune.ngrams import NgramBag, key
from spectune.run import load_run
from spectune.train import train


@pytest.fixture(scope="module")
def cls_data(tmp_path_factory):
    return tiny.write_classify(tmp_path_factory.mktemp("cls"))


def test_bag_scores_the_texts_ngrams_whatever_the_padding():
    torch.manual_seed(0)
    bag = NgramBag(1 << 16, 3)
    with torch.no_grad():
        bag.table.weight.normal_()
    ids = torch.tensor([[4, 5, 6, 7, 8], [4, 5, 9, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    got = bag(ids, mask)  # (B, L)
    for b in range(2):
        toks = ids[b, :int(mask[b].sum())].tolist()
        rows = [bag.table.weight[int(key([torch.tensor(t) for t in toks[i:i + n]], n).remainder(1 << 16))]
                for n in (1, 2, 3) for i in range(len(toks) - n + 1)]
        assert torch.allclose(got[b], torch.stack(rows).sum(0) / len(rows) ** 0.5, atol=1e-6)
    assert torch.allclose(bag(ids[1:, :3], mask[1:, :3]), got[1:], atol=1e-6)  # padding changes nothing


def test_classify_table_learns_alone_saves_and_reloads(tmp_path, tiny_bert_dir, cls_data):
    def run(name, features):
        return train(build(TrainConfig, {"task": "classify", "model": str(tiny_bert_dir),
                                         "train": str(cls_data["train"]), "test": str(cls_data["test"]),
                                         "out": str(tmp_path / name), "epochs": 4, "batch_size": 8, "lr": 0.0,
                                         "ngram_lr": 0.05, "quiet": True, "ngram_features": features}))

    # lr 0 keeps the encoder and its classifier at their start: only the table can learn the cue words.
    alone, without = run("bag", 4096), run("none", 0)
    assert alone["test"]["accuracy"] >= 0.9 and without["test"]["accuracy"] < 0.8
    model_dir = tmp_path / "bag/model"
    assert not any(k.startswith("ngrams.") for k in load_file(model_dir / "model.safetensors"))
    table = load_file(model_dir / FILES["ngrams"])["table.weight"]
    assert table.shape == (4096, 2) and table.abs().sum() > 0
    _, _, model = load_run(tmp_path / "bag")
    assert torch.equal(model.ngrams.table.weight, table)
    assert main(["eval", "--model", str(tmp_path / "bag"), "--data", str(cls_data["test"]), "--json",
                 str(tmp_path / "again.json")]) == 0
    assert json.loads((tmp_path / "again.json").read_text())["accuracy"] == alone["test"]["accuracy"]
