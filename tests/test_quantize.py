"""--quantize int8: close to the float model, and speculative decoding exact relative to the
quantized target."""

import torch
from test_decode import PROMPT, sharp_llama

from spectune import Generator
from spectune.decode.drafters import LookupDrafter, layers_drafter
from spectune.decode.engine import decode
from spectune.quantize import Int8Linear, quantize_int8


def test_int8_linear_is_close_to_the_float_layer():
    torch.manual_seed(0)
    lin = torch.nn.Linear(64, 96)
    x = torch.randn(5, 3, 64)
    want, got = lin(x), Int8Linear(lin)(x).float()
    assert got.shape == want.shape
    assert (got - want).abs().max() < 0.03 * want.abs().max()
    long = torch.randn(2, Int8Linear.DEQUANTIZE_FROM, 64)  # a prompt's rows: the dequantized path
    q = Int8Linear(lin)
    torch.testing.assert_close(q(long).float(), torch.cat([q(long[:, i:i + 1]) for i in range(long.shape[1])], 1)
                               .float(), atol=0.05, rtol=0.02)


def test_quantized_model_keeps_its_predictions_and_speculation_stays_exact():
    fp = sharp_llama()
    q = quantize_int8(sharp_llama())
    assert sum(isinstance(m, Int8Linear) for m in q.modules()) == 3 * 7 + 1  # every linear, the head too
    ids = torch.tensor([PROMPT])
    with torch.no_grad():
        a, b = fp(ids).logits[0].float(), q(ids).logits[0].float()
    assert torch.nn.functional.cosine_similarity(a, b, dim=-1).min() > 0.99
    assert (a.argmax(-1) == b.argmax(-1)).float().mean() > 0.9

    def run(drafter):
        return [t for chunk in decode(q, PROMPT, max_new_tokens=30, drafter=drafter) for t in chunk]

    plain = run(None)
    assert run(LookupDrafter()) == plain and run(layers_drafter(q, 1)) == plain


def test_generator_and_cli_flag(tiny_llama_dir):
    g = Generator(str(tiny_llama_dir), quantize="int8", draft="lookup")
    assert isinstance(g.model.lm_head, Int8Linear)
    assert g.generate("Hello there", max_new_tokens=6).new_tokens >= 1
