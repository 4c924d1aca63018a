"""Beam search: the same hypothesis and score transformers' beam search gives, whatever the beams,
the length penalty, EOS or the length limit."""

import pytest
import torch
from test_decode import sharp_llama

from spectune import Generator
from spectune.decode.beam import beam_search
from spectune.errors import SpectuneError


@pytest.mark.parametrize("beams, penalty, n, eos", [(2, 1.0, 12, None), (4, 1.0, 20, 7), (4, 0.0, 16, 7),
                                                    (3, 2.0, 10, None), (5, -1.0, 14, 11)])
def test_beam_search_equals_transformers(beams, penalty, n, eos):
    model = sharp_llama(seed=beams)
    model.lm_head.weight.data /= 10  # flatter than greedy tests need: beams must compete
    differs = False
    for prompt in ([5, 9, 33, 70], [100, 7, 250, 31, 31, 8]):
        hf = model.generate(torch.tensor([prompt]), num_beams=beams, do_sample=False, max_new_tokens=n,
                            length_penalty=penalty, eos_token_id=eos, pad_token_id=0,
                            output_scores=True, return_dict_in_generate=True)
        want = hf.sequences[0, len(prompt):].tolist()
        if eos is not None and eos in want:
            want = want[: want.index(eos) + 1]
        got, score = beam_search(model, prompt, beams=beams, max_new_tokens=n, eos={eos} if eos else set(),
                                 length_penalty=penalty)
        assert got == want, (prompt, got, want)
        assert score == pytest.approx(float(hf.sequences_scores[0]), abs=1e-4)
        greedy = model.generate(torch.tensor([prompt]), do_sample=False, max_new_tokens=n, pad_token_id=0,
                                eos_token_id=eos)[0, len(prompt):].tolist()
        differs |= greedy != got
    assert differs  # the beams competed: the search found something greedy decoding does not


def test_generator_beams_and_their_refusals(tiny_llama_dir):
    gen = Generator(str(tiny_llama_dir))
    r = gen.generate("The capital of France", num_beams=3, max_new_tokens=8)
    assert r.new_tokens <= 8 and r.finish_reason in ("stop", "length")
    with pytest.raises(SpectuneError, match="deterministic"):
        gen.generate("Hi", num_beams=2, temperature=0.7)
    with pytest.raises(SpectuneError, match="drafts nothing"):
        Generator(str(tiny_llama_dir), draft="lookup").generate("Hi", num_beams=2)
