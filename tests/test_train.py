"""The training loop's promises: the run folder, resume == uninterrupted, merged LoRA == unmerged,
early stopping keeps the best checkpoint, and tuning methods train what they say."""

import csv
import json

import pytest
import tiny
import torch
from safetensors.torch import load_file

from spectune.cli import main
from spectune.config import TrainConfig, build
from spectune.errors import SpectuneError
from spectune.run import load_run
from spectune.train import train


def config(tmp_path, model_dir, task, data, **kw):
    values = {"task": task, "model": str(model_dir), "train": str(data["train"]), "out": str(tmp_path / "run"),
              "epochs": 2, "batch_size": 8, "lr": 1e-3, "quiet": True, **kw}
    return build(TrainConfig, values)


@pytest.fixture(scope="module")
def ner_data(tmp_path_factory):
    return tiny.write_ner(tmp_path_factory.mktemp("ner"))


@pytest.fixture(scope="module")
def cls_data(tmp_path_factory):
    return tiny.write_classify(tmp_path_factory.mktemp("cls"))


def test_ner_run_folder_holds_everything(tmp_path, tiny_bert_dir, ner_data):
    info = train(config(tmp_path, tiny_bert_dir, "ner", ner_data, dev=str(ner_data["dev"]),
                        test=str(ner_data["test"]), epochs=3))
    run = tmp_path / "run"
    assert info["status"] == "done" and info["labels"] == ["O", "B-LOC", "B-PER", "I-PER"]
    assert info["scheme"] == "IOB2" and info["best"]["metric"] == "f1"
    for name in ("model/model.safetensors", "model/tokenizer.json", "spectune.json", "metrics.csv", "curves.png",
                 "test-report.json", "test-report.txt", "checkpoint-last/trainer_state.json"):
        assert (run / name).is_file(), name
    rows = list(csv.DictReader(open(run / "metrics.csv")))
    assert [int(r["step"]) for r in rows] == [12, 24, 36]  # 96 examples / 8 per step, once per epoch
    assert float(rows[-1]["dev_loss"]) < float(rows[0]["dev_loss"])
    report = json.loads((run / "test-report.json").read_text())
    assert set(report["token_report"]) >= {"O", "B-PER", "micro avg", "macro avg", "weighted avg"}
    assert "O" not in report["token_report_without_O"]
    assert set(report["entity"]["per_type"]) == {"PER", "LOC"}
    text = (run / "test-report.txt").read_text()
    assert "Token-level report" in text and "Entity-level report (seqeval" in text


@pytest.mark.parametrize("task, peft, model_fixture, extra", [
    ("ner", "full", "tiny_bert_dir", {}), ("ner", "full", "tiny_bert_dir", {"crf": True}),
    ("ner", "full", "tiny_bert_dir", {"group_by_length": True}),  # its own order, also (seed, epoch)'s alone
    ("classify", "lora", "tiny_llama_dir", {})])
def test_resume_after_a_crash_equals_an_uninterrupted_run(tmp_path, task, peft, model_fixture, extra, ner_data,
                                                           cls_data, monkeypatch, request):
    """BERT's dropout draws random numbers every step, so this also checks the RNG state is restored;
    the LoRA run checks that a checkpoint holding only the trainable weights resumes exactly."""
    from spectune.tasks.sequence_classification import SequenceClassification
    from spectune.tasks.token_classification import TokenClassification

    model_dir, data = request.getfixturevalue(model_fixture), ner_data if task == "ner" else cls_data
    task_class = TokenClassification if task == "ner" else SequenceClassification
    common = dict(epochs=2, save_every=3, batch_size=8, peft=peft, **extra)
    whole = tmp_path / "whole"
    train(config(whole, model_dir, task, data, **common))

    real_loss, calls = task_class.loss, {"n": 0}

    def crash_at_17(self, model, batch, *args):  # mid-epoch 2, two steps after the checkpoint at step 15
        calls["n"] += 1
        if calls["n"] == 17:
            raise KeyboardInterrupt
        return real_loss(self, model, batch, *args)

    monkeypatch.setattr(task_class, "loss", crash_at_17)
    crashed = tmp_path / "crashed"
    with pytest.raises(KeyboardInterrupt):
        train(config(crashed, model_dir, task, data, **common))
    monkeypatch.setattr(task_class, "loss", real_loss)
    state = json.loads((crashed / "run/checkpoint-last/trainer_state.json").read_text())
    assert state["step"] == 15 and state["epoch"] == 1 and state["batches_in_epoch"] == 3
    saved = load_file(crashed / "run/checkpoint-last/model.safetensors")
    assert peft == "full" or all("lora_" in k or "score" in k for k in saved)  # trainable weights only
    assert main(["train", "--out", str(crashed / "run"), "--resume", "--quiet"]) == 0  # options from the run
    names = ["model.safetensors" if peft == "full" else "adapter_model.safetensors"]
    names += ["crf.safetensors"] * bool(extra.get("crf"))
    for name in names:
        a, b = load_file(whole / "run/model" / name), load_file(crashed / "run/model" / name)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_merged_lora_equals_the_unmerged_adapter(tmp_path, tiny_llama_dir, cls_data):
    train(config(tmp_path, tiny_llama_dir, "classify", cls_data, peft="lora", lora_r=4, lr=5e-3))
    run = tmp_path / "run"
    assert (run / "model/adapter_model.safetensors").is_file() and not (run / "model/model.safetensors").exists()
    assert main(["merge", "--model", str(run), "--out", str(tmp_path / "merged")]) == 0
    from transformers import AutoModelForSequenceClassification

    merged = AutoModelForSequenceClassification.from_pretrained(tmp_path / "merged").eval()
    _, task, unmerged = load_run(run)
    batch = task.collate(task.encode(task.read(cls_data["test"], "test")))
    with torch.no_grad():
        a = unmerged(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        b = merged(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    base = AutoModelForSequenceClassification.from_pretrained(tiny_llama_dir, num_labels=2)
    assert not torch.equal(base.score.weight, merged.score.weight)  # the head trained and was kept
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_early_stopping_keeps_the_best_checkpoint(tmp_path, tiny_bert_dir, cls_data, monkeypatch):
    from spectune.tasks.sequence_classification import SequenceClassification

    scripted = iter([0.50, 0.70, 0.60, 0.65, 0.90, 0.95])
    snapshots = []

    def fake_evaluate(self, model, feats, rows):
        snapshots.append({k: v.detach().clone() for k, v in model.state_dict().items()})
        return {"task": "classify", "accuracy": next(scripted), "loss": 1.0}

    monkeypatch.setattr(SequenceClassification, "evaluate", fake_evaluate)
    info = train(config(tmp_path, tiny_bert_dir, "classify", cls_data, dev=str(cls_data["dev"]), epochs=6,
                        patience=2))
    assert len(snapshots) == 4  # 0.5, 0.7 (best), 0.6, 0.65: two without improvement -> stop
    assert info["best"] == {"metric": "accuracy", "value": 0.70, "step": 24}
    saved = load_file(tmp_path / "run/model/model.safetensors")
    assert all(torch.equal(saved[k], snapshots[1][k]) for k in saved)
    assert not all(torch.equal(saved[k], snapshots[3][k]) for k in saved)


def test_tuning_methods_train_what_they_say(tmp_path, tiny_llama_dir, tiny_bert_dir, cls_data, ner_data):
    from spectune.tuning import TuningOptions, apply_tuning, count_parameters

    def trainable(model_dir, method, task="classify", **kw):
        from transformers import AutoModelForSequenceClassification

        m = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=2)
        m = apply_tuning(m, TuningOptions(method, **kw), task)
        return {n for n, p in m.named_parameters() if p.requires_grad}, count_parameters(m)

    names, _ = trainable(tiny_bert_dir, "bitfit")
    assert names and all(n.endswith(".bias") or n.startswith("classifier") for n in names)
    with pytest.raises(SpectuneError, match="has no bias terms"):
        trainable(tiny_llama_dir, "bitfit")
    names, _ = trainable(tiny_llama_dir, "freeze", freeze_top_k=1)
    assert names == {n for n in names if n.startswith(("model.layers.1.", "model.norm", "score"))}
    assert any(n.startswith("model.layers.1.") for n in names) and "score.weight" in names
    with pytest.raises(SpectuneError, match="freeze_top_k: got 3, but the model has 2 layers"):
        trainable(tiny_llama_dir, "freeze", freeze_top_k=3)
    names, (n_train, n_total) = trainable(tiny_llama_dir, "lora", lora_r=2)
    assert 0 < n_train < n_total / 4 and any("lora_A" in n for n in names)
    with pytest.raises(SpectuneError, match="prompt tuning prepends virtual tokens"):
        trainable(tiny_llama_dir, "prompt", task="ner")


def test_a_metric_the_task_does_not_report_is_refused(tmp_path, tiny_bert_dir, ner_data):
    with pytest.raises(SpectuneError, match="metric: got 'accuracy', but a ner run reports f1, precision"):
        train(config(tmp_path, tiny_bert_dir, "ner", ner_data, dev=str(ner_data["dev"]), metric="accuracy"))


def test_an_existing_run_is_never_overwritten(tmp_path, tiny_bert_dir, cls_data):
    cfg = config(tmp_path, tiny_bert_dir, "classify", cls_data, epochs=1)
    train(cfg)
    before = (tmp_path / "run/model/model.safetensors").read_bytes()
    with pytest.raises(SpectuneError, match="already holds a run; pass --resume"):
        train(cfg)
    assert (tmp_path / "run/model/model.safetensors").read_bytes() == before


def test_cli_classify_train_eval_predict(tmp_path, tiny_bert_dir, cls_data, capsys):
    run = tmp_path / "run"
    assert main(["train", "--task", "classify", "--model", str(tiny_bert_dir), "--train", str(cls_data["train"]),
                 "--dev", str(cls_data["dev"]), "--test", str(cls_data["test"]), "--out", str(run),
                 "--epochs", "2", "--lr", "1e-3", "--batch-size", "8", "--class-weights", "--quiet"]) == 0
    assert "accuracy:" in capsys.readouterr().out and (run / "confusion.png").is_file()
    assert main(["eval", "--model", str(run), "--data", str(cls_data["test"]), "--json",
                 str(tmp_path / "e.json")]) == 0
    assert "Per-class report" in capsys.readouterr().out
    report = json.loads((tmp_path / "e.json").read_text())
    assert report["task"] == "classify" and set(report) >= {"accuracy", "macro_f1", "report"}
    inputs = tmp_path / "in.txt"
    inputs.write_text("good great help\n\nlazy bad password\n")
    assert main(["predict", "--model", str(run), "--input", str(inputs)]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(rows) == 2 and all(r["label"] in ("pos", "neg") and 0.5 <= r["probability"] <= 1 for r in rows)


def test_ner_predict_gives_entities_with_spans(tmp_path, tiny_bert_dir, ner_data, capsys):
    train(config(tmp_path, tiny_bert_dir, "ner", ner_data, epochs=1))
    inputs = tmp_path / "in.txt"
    inputs.write_text("the  paris fox jumps over france\n")
    assert main(["predict", "--model", str(tmp_path / "run"), "--input", str(inputs)]) == 0
    row = json.loads(capsys.readouterr().out)
    assert row["tokens"] == ["the", "paris", "fox", "jumps", "over", "france"] and len(row["tags"]) == 6
    for e in row["entities"]:
        assert "the  paris fox jumps over france"[e["start"]:e["end"]] == e["text"]


def test_lm_lora_on_chats_then_generate(tmp_path, tiny_llama_dir, capsys):
    chat = tiny.write_chat(tmp_path)
    info = train(build(TrainConfig, {"task": "lm", "model": str(tiny_llama_dir), "train": str(chat),
                                     "dev": str(chat), "out": str(tmp_path / "run"), "peft": "lora", "epochs": 3,
                                     "batch_size": 4, "lr": 1e-2, "quiet": True}))
    rows = list(csv.DictReader(open(tmp_path / "run/metrics.csv")))
    assert float(rows[-1]["dev_loss"]) < float(rows[0]["dev_loss"]) and info["best"]["metric"] == "loss"
    prompts = tmp_path / "p.txt"
    prompts.write_text("What is the capital of France?\n")
    assert main(["predict", "--model", str(tmp_path / "run"), "--input", str(prompts),
                 "--max-new-tokens", "5"]) == 0
    assert json.loads(capsys.readouterr().out)["prompt"] == "What is the capital of France?"


def test_export_gives_folders_transformers_loads_alone(tmp_path, tiny_llama_dir, tiny_gguf, cls_data, capsys):
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    train(config(tmp_path, tiny_llama_dir, "classify", cls_data, peft="lora", lora_r=4, epochs=1))
    run = tmp_path / "run"
    assert main(["export", "--model", str(run), "--out", str(tmp_path / "x")]) == 2
    assert "pass --merge-lora" in capsys.readouterr().err and not (tmp_path / "x").exists()
    assert main(["export", "--model", str(run), "--out", str(tmp_path / "x"), "--merge-lora"]) == 0
    AutoModelForSequenceClassification.from_pretrained(tmp_path / "x")
    assert main(["export", "--model", str(run), "--out", str(tmp_path / "x"), "--merge-lora"]) == 2
    assert "already exists" in capsys.readouterr().err
    train(config(tmp_path, tiny_llama_dir, "classify", cls_data, epochs=1, out=str(tmp_path / "full")))
    assert main(["export", "--model", str(tmp_path / "full"), "--out", str(tmp_path / "y")]) == 0
    assert json.loads((tmp_path / "y/spectune-export.json").read_text())["labels"] == ["neg", "pos"]
    AutoModelForSequenceClassification.from_pretrained(tmp_path / "y")
    assert main(["export", "--model", str(tiny_gguf), "--out", str(tmp_path / "z")]) == 0  # GGUF -> plain folder
    AutoModelForCausalLM.from_pretrained(tmp_path / "z")
