"""Distilled drafts: training raises the draft's agreement with its target, the trained draft plugs
into --draft and leaves the output exactly the target's, it is refused for another target, and an
interrupted distillation resumes."""

import json

import pytest
import tiny
import torch

from spectune import Generator
from spectune.cli import main
from spectune.errors import SpectuneError
from spectune.run import read_run


@pytest.fixture(scope="module")
def target_dir(tmp_path_factory):
    # A 4-layer target with varied continuations (untied, scaled head) whose first 2 layers alone
    # rarely agree with it: there is something to learn.
    model = tiny.tiny_llama(seed=3, sharpen=1.0, num_hidden_layers=4, tie_word_embeddings=False)
    with torch.no_grad():
        model.lm_head.weight.mul_(30.0)
    return tiny.save_with_tokenizer(model, tmp_path_factory.mktemp("target"), tiny.TINY_BPE)


@pytest.fixture(scope="module")
def prompts(tmp_path_factory):
    d = tmp_path_factory.mktemp("prompts")
    words = "the a cat dog sat on mat ran far blue red sky sea big small".split()
    g = torch.Generator().manual_seed(0)
    lines = [" ".join(words[i] for i in torch.randint(0, len(words), (6,), generator=g).tolist()) for _ in range(72)]
    (d / "train.jsonl").write_text("".join(json.dumps({"prompt": x}) + "\n" for x in lines[:60]))
    (d / "dev.jsonl").write_text("".join(json.dumps({"messages": [{"role": "user", "content": x},
                                                                   {"role": "assistant", "content": "dropped"}]})
                                         + "\n" for x in lines[60:]))
    return d


def distill(out, target_dir, prompts, *extra):
    return main(["distill", "--target", str(target_dir), "--data", str(prompts / "train.jsonl"), "--dev",
                 str(prompts / "dev.jsonl"), "--out", str(out), "--layers", "2", "--new-tokens", "24",
                 "--batch-size", "8", "--lr", "3e-3", "--max-length", "64", "--quiet", *extra])


def test_distillation_raises_agreement_and_the_draft_is_exact(tmp_path, target_dir, prompts):
    assert distill(tmp_path / "draft", target_dir, prompts, "--epochs", "12", "--lr", "5e-3") == 0
    info = read_run(tmp_path / "draft")
    assert info["task"] == "draft" and len(info["target_fingerprint"]) == 64

    def acceptance(gen):
        drafted = accepted = 0
        for line in (prompts / "dev.jsonl").read_text().splitlines():
            text = json.loads(line)["messages"][0]["content"]
            r = gen.generate(text, raw=True, max_new_tokens=24)
            assert r.text == plain.generate(text, raw=True, max_new_tokens=24).text  # exact: the target's text
            drafted, accepted = drafted + r.speculative["drafted"], accepted + r.speculative["accepted"]
        return accepted / drafted

    plain = Generator(str(target_dir))
    before = acceptance(Generator(str(target_dir), draft="layers:2"))  # the same layers, untrained
    after = acceptance(Generator(str(target_dir), draft=str(tmp_path / "draft")))
    assert after > before + 0.1 and info["best"]["value"] > 0.6, (before, after, info["best"])
    other = tiny.save_with_tokenizer(tiny.tiny_llama(seed=9, num_hidden_layers=4), tmp_path / "other", tiny.TINY_BPE)
    with pytest.raises(SpectuneError, match="distilled for"):
        Generator(str(other), draft=str(tmp_path / "draft"))


def test_head_distillation_raises_agreement_and_the_head_is_exact(tmp_path, target_dir, prompts):
    assert distill(tmp_path / "head", target_dir, prompts, "--kind", "head", "--vocab", "120", "--epochs", "12",
                   "--lr", "5e-3") == 0
    info = read_run(tmp_path / "head")
    assert info["task_options"]["kind"] == "head" and info["task_options"]["layers"] == 2
    curve = [float(line.split(",")[4]) for line in (tmp_path / "head/metrics.csv").read_text().splitlines()[1:]]
    assert curve[-1] > curve[0] + 0.1, curve  # agreement rises with training
    plain, fast = Generator(str(target_dir)), Generator(str(target_dir), draft=str(tmp_path / "head"))
    assert len(fast.drafter.head.vocab) == 120
    accepted = 0
    for line in (prompts / "dev.jsonl").read_text().splitlines():
        text = json.loads(line)["messages"][0]["content"]
        r = fast.generate(text, raw=True, max_new_tokens=24)
        assert r.text == plain.generate(text, raw=True, max_new_tokens=24).text
        accepted += r.speculative["accepted"]
    assert accepted > 0
    other = tiny.save_with_tokenizer(tiny.tiny_llama(seed=9, num_hidden_layers=4), tmp_path / "other", tiny.TINY_BPE)
    with pytest.raises(SpectuneError, match="distilled for"):
        Generator(str(other), draft=str(tmp_path / "head"))
    assert main(["distill", "--target", str(target_dir), "--data", str(prompts / "train.jsonl"), "--out",
                 str(tmp_path / "bad"), "--vocab", "50"]) == 2  # a reduced vocabulary is the head's


@pytest.mark.parametrize("kind", ["small", "head"])
def test_interrupted_distillation_resumes_to_the_same_draft(tmp_path, target_dir, prompts, monkeypatch, kind):
    from safetensors.torch import load_file

    from spectune.tasks.draft_distill import DraftDistill
    from spectune.tasks.head_distill import HeadDistill

    task = HeadDistill if kind == "head" else DraftDistill
    extra = ("--kind", kind, "--vocab", "100") if kind == "head" else ()
    assert distill(tmp_path / "whole", target_dir, prompts, "--epochs", "2", "--save-every", "3", *extra) == 0
    real_loss, calls = task.loss, {"n": 0}

    def crash_at_step_9(self, model, batch, *args, **kw):  # training steps only (dev scoring may call it too)
        calls["n"] += model.training
        if calls["n"] == 9:
            raise KeyboardInterrupt
        return real_loss(self, model, batch, *args, **kw)

    monkeypatch.setattr(task, "loss", crash_at_step_9)
    assert distill(tmp_path / "cut", target_dir, prompts, "--epochs", "2", "--save-every", "3", *extra) == 130
    monkeypatch.setattr(task, "loss", real_loss)
    state = json.loads((tmp_path / "cut/checkpoint-last/trainer_state.json").read_text())
    assert state["step"] == 8  # the epoch-end checkpoint
    assert main(["distill", "--out", str(tmp_path / "cut"), "--resume", "--quiet"]) == 0
    name = "draft_head.safetensors" if kind == "head" else "model.safetensors"
    a, b = load_file(tmp_path / "whole/model" / name), load_file(tmp_path / "cut/model" / name)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_train_lm_with_distill_draft_gives_a_matching_draft(tmp_path, tiny_llama_dir):
    chat = tiny.write_chat(tmp_path)
    assert main(["train", "--task", "lm", "--model", str(tiny_llama_dir), "--train", str(chat), "--out",
                 str(tmp_path / "run"), "--peft", "lora", "--epochs", "2", "--batch-size", "4", "--lr", "1e-2",
                 "--distill-draft", "--draft-layers", "1", "--draft-new-tokens", "12", "--quiet"]) == 0
    draft = tmp_path / "run/draft"
    assert read_run(draft)["task"] == "draft"
    plain = Generator(str(tmp_path / "run")).generate("What is the capital of France?", max_new_tokens=12)
    fast = Generator(str(tmp_path / "run"), draft=str(draft)).generate("What is the capital of France?",
                                                                       max_new_tokens=12)
    assert fast.text == plain.text and fast.speculative["target_passes"] >= 1
    with pytest.raises(SpectuneError, match="distilled for"):  # the base model is not the fine-tuned target
        Generator(str(tiny_llama_dir), draft=str(draft))
    assert main(["train", "--task", "classify", "--model", "x", "--train", "y", "--out", str(tmp_path / "z"),
                 "--distill-draft"]) == 2
    # export: the merged model and its draft, both plain folders transformers loads alone
    assert main(["export", "--model", str(tmp_path / "run"), "--out", str(tmp_path / "x"), "--merge-lora"]) == 0
    from transformers import AutoModelForCausalLM

    assert AutoModelForCausalLM.from_pretrained(tmp_path / "x/draft").config.num_hidden_layers == 1
    AutoModelForCausalLM.from_pretrained(tmp_path / "x")
    assert main(["export", "--model", str(tiny_llama_dir), "--out", str(tmp_path / "y"), "--draft",
                 str(draft)]) == 2  # a draft for other weights


def test_train_lm_with_distill_draft_head(tmp_path, tiny_llama_dir):
    chat = tiny.write_chat(tmp_path)
    assert main(["train", "--task", "lm", "--model", str(tiny_llama_dir), "--train", str(chat), "--out",
                 str(tmp_path / "run"), "--peft", "lora", "--epochs", "1", "--batch-size", "4", "--lr", "1e-2",
                 "--distill-draft", "--draft-kind", "head", "--draft-vocab", "64", "--draft-new-tokens", "12",
                 "--quiet"]) == 0
    opts = read_run(tmp_path / "run/draft")["task_options"]
    assert opts["kind"] == "head" and opts["layers"] == 1 and opts["vocab"] == 64
    gen = Generator(str(tmp_path / "run"), draft=str(tmp_path / "run/draft"))
    assert len(gen.drafter.head.vocab) <= 64
    fast = gen.generate("What is the capital of France?", max_new_tokens=12)
    assert fast.text == Generator(str(tmp_path / "run")).generate("What is the capital of France?",
                                                                    max_new_tokens=12).text


def test_off_policy_texts_keep_their_answers_and_are_labelled_everywhere(tmp_path, target_dir):
    """--new-tokens 0: no answers generated; a chat's own answers are the text, labelled at every position."""
    from spectune.loading import tokenizer_from_folder
    from spectune.tasks.head_distill import HeadDistill

    chat = tmp_path / "chat.jsonl"
    chat.write_text(json.dumps({"messages": [{"role": "user", "content": "the cat sat"},
                                             {"role": "assistant", "content": "on the blue mat"}]}) + "\n")
    tok = tokenizer_from_folder(target_dir)
    task = HeadDistill(tok, max_length=64, target=str(target_dir), layers=1, new_tokens=0)
    (feat,) = task.encode(task.read(chat))
    assert "blue mat" in tok.decode(feat["input_ids"])  # the answer kept, not regenerated
    n = len(feat["input_ids"])
    assert feat["start"] == 0 and feat["answer"] == 0 and feat["top_ids"].shape[0] == n - 1
    assert feat["feats"].shape == (n, 32)
    on_policy = HeadDistill(tok, max_length=64, target=str(target_dir), layers=1, new_tokens=5)
    (feat,) = on_policy.encode(on_policy.read(chat))
    assert "blue mat" not in tok.decode(feat["input_ids"]) and feat["answer"] > 0  # the target's own answer
    assert feat["top_ids"].shape[0] == len(feat["input_ids"]) - 1  # the prompt's positions labelled too
