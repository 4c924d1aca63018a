"""Generation for users: prompt formatting, settings, the context check, streaming, stop strings,
files of prompts answered in batches."""

import pytest
import torch

from spectune import Generator, generate
from spectune.errors import SpectuneError
from spectune.generate import prompt_ids


@pytest.fixture(scope="module")
def gen(tiny_llama_dir):
    return Generator(str(tiny_llama_dir))


def test_chat_template_applied_unless_raw(gen):
    tok = gen.tokenizer
    chat = tok.decode(prompt_ids(tok, "hello there")[0])
    assert chat == "<|im_start|>user\nhello there<|im_end|>\n<|im_start|>assistant\n"
    assert tok.decode(prompt_ids(tok, "hello there", raw=True)[0]) == "hello there"
    with_system = tok.decode(prompt_ids(tok, "hi", system="Be brief.")[0])
    assert with_system.startswith("<|im_start|>system\nBe brief.<|im_end|>")


def test_greedy_equals_a_plain_argmax_loop(gen):
    """Greedy output is the model's own argmax chain (checked against a loop with no cache)."""
    ids = prompt_ids(gen.tokenizer, "The capital of France")
    seq = ids
    with torch.no_grad():
        for _ in range(12):
            nxt = gen.model(seq).logits[:, -1].argmax(-1, keepdim=True)
            seq = torch.cat([seq, nxt], dim=1)
            if nxt.item() == gen.tokenizer.eos_token_id:
                break
    expected = gen.tokenizer.decode(seq[0, ids.shape[1]:], skip_special_tokens=True)
    result = gen.generate("The capital of France", max_new_tokens=12)
    assert result.text == expected and result.new_tokens == seq.shape[1] - ids.shape[1]


def test_stream_pieces_make_the_whole_text(gen):
    pieces = list(gen.stream("The quick brown fox", raw=True, max_new_tokens=20, temperature=1.0, seed=3))
    assert len(pieces) > 1
    assert "".join(pieces) == gen.generate("The quick brown fox", raw=True, max_new_tokens=20,
                                           temperature=1.0, seed=3).text


def test_sampling_is_seeded(gen):
    opts = dict(raw=True, max_new_tokens=16, temperature=1.5)
    a = gen.generate("Hello", seed=1, **opts)
    assert a.text == gen.generate("Hello", seed=1, **opts).text
    others = {gen.generate("Hello", seed=s, **opts).text for s in range(2, 7)}
    assert others - {a.text}, "different seeds never changed the sample"
    assert gen.generate("Hello", seed=1, top_k=1, **opts).text == gen.generate("Hello", raw=True,
                                                                               max_new_tokens=16).text


def test_max_new_tokens_and_bad_options(gen):
    assert gen.generate("Hello", raw=True, max_new_tokens=3).new_tokens <= 3
    with pytest.raises(SpectuneError, match="top_p"):
        gen.generate("Hello", top_p=2.0)
    with pytest.raises(SpectuneError, match="expected a string"):
        generate(["not", "a", "string"], model="unused")


def test_greedy_equals_transformers_generate(gen):
    ids = prompt_ids(gen.tokenizer, "The capital of France")
    hf = gen.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=12, do_sample=False,
                            pad_token_id=0, eos_token_id=gen.tokenizer.eos_token_id)[0, ids.shape[1]:]
    assert gen.generate("The capital of France", max_new_tokens=12).text == \
        gen.tokenizer.decode(hf, skip_special_tokens=True)


def test_prompt_over_the_context_is_refused_or_truncated(gen):
    long = "word " * (gen.context + 10)
    with pytest.raises(SpectuneError, match=r"exceeds the model's context of \d+ tokens.*truncate it on the left"):
        gen.generate(long, raw=True, max_new_tokens=4)
    r = gen.generate(long, raw=True, max_new_tokens=4, truncate="left")
    assert r.prompt_tokens == gen.context - 4 and r.new_tokens == 4
    with pytest.raises(SpectuneError, match="exceeds"):
        gen.generate("hi", max_new_tokens=gen.context, truncate="left")


def test_generate_many_equals_one_by_one(gen):
    prompts = ["The capital of France", [{"role": "user", "content": "Hi there"}], "Once upon a time", "x"]
    opts = dict(max_new_tokens=10, temperature=0.9, seed=4)
    alone = [gen.generate(p, **opts) for p in prompts]
    got = dict(gen.generate_many(prompts, batch_size=3, **opts))
    assert [got[i].text for i in range(4)] == [a.text for a in alone]
    assert [got[i].finish_reason for i in range(4)] == [a.finish_reason for a in alone]


@pytest.mark.parametrize("draft", [None, "lookup"])
def test_stop_strings_cut_the_text_on_both_paths(tiny_llama_dir, draft):
    gen = Generator(str(tiny_llama_dir), draft=draft)
    full = gen.generate("The quick brown fox", raw=True, max_new_tokens=24, temperature=1.0, seed=5).text
    assert len(full) > 8
    stop = full[4:7]
    cut = gen.generate("The quick brown fox", raw=True, max_new_tokens=24, temperature=1.0, seed=5, stop=[stop])
    assert cut.text == full[: full.index(stop)]
    pieces = list(gen.stream("The quick brown fox", raw=True, max_new_tokens=24, temperature=1.0, seed=5,
                             stop=[stop]))
    assert "".join(pieces) == cut.text


def test_speculative_path_gives_the_same_text(tiny_llama_dir):
    plain = Generator(str(tiny_llama_dir)).generate("The capital of France", max_new_tokens=16)
    spec = Generator(str(tiny_llama_dir), draft="layers:1").generate("The capital of France", max_new_tokens=16)
    assert spec.text == plain.text and spec.speculative["target_passes"] >= 1


def test_prompts_file_answers_each_line(tiny_llama_dir, tmp_path, capsys):
    import json

    from spectune.cli import main

    f = tmp_path / "p.jsonl"
    f.write_text(json.dumps({"id": "a", "prompt": "Hello"}) + "\n" +
                 json.dumps({"id": 2, "messages": [{"role": "user", "content": "Hi"}]}) + "\n")
    out = tmp_path / "r.jsonl"
    assert main(["generate", "--model", str(tiny_llama_dir), "--prompts", str(f), "--out", str(out),
                 "--max-new-tokens", "4", "--draft", "lookup"]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in rows] == ["a", 2]
    assert set(rows[0]) == {"id", "text", "new_tokens", "drafted", "accepted", "target_passes", "seconds"}
    f.write_text('{"id": 1, "question": "x"}\n')
    assert main(["generate", "--model", str(tiny_llama_dir), "--prompts", str(f)]) == 2
    assert f"{f}:1: expected" in capsys.readouterr().err
    # --skip-bad: bad lines reported, the others answered, in order, in batches
    f.write_text('{"id": 1, "prompt": "Hello"}\n{"id": 2, "prompt": \n{"id": 3, "question": "x"}\n'
                 + "".join(json.dumps({"id": i, "prompt": f"Say {i}"}) + "\n" for i in range(4, 9)))
    assert main(["generate", "--model", str(tiny_llama_dir), "--prompts", str(f), "--out", str(out),
                 "--max-new-tokens", "5", "--batch-size", "3", "--skip-bad"]) == 0
    err = capsys.readouterr().err
    assert f"{f}:2: invalid JSON" in err and f"{f}:3: expected" in err and "(skipped)" in err
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in rows] == [1, 4, 5, 6, 7, 8]
