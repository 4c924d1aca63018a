"""The EAGLE-style draft head's promises: the engine hands it exactly the target's final hidden
states of every position it keeps (batched, ragged, after rejections); its incremental drafting
(its own cache, rolled back past the positions it fed with its own features) drafts what a fresh
head drafts from scratch; speculative output with it equals plain output (batches, a reduced
vocabulary, seeded sampling, an int8 target); it saves and loads in safetensors."""

import copy

import pytest
import torch
from test_batch_decode import PROMPTS, batched, solo

from spectune.decode.engine import GREEDY, Batch, Request
from spectune.decode.sampling import Sampling
from spectune.draft_head import DraftHead, HeadDrafter, head_drafter
from spectune.errors import SpectuneError


@pytest.fixture(scope="module")
def alone(target):
    return [solo(target, p) for p in PROMPTS]


def make_head(target, vocab=None, steps=40):
    """A head fitted a little (teacher-forced, on the target's own continuations of the first two
    prompts), so that it drafts a mix of right and wrong tokens."""
    torch.manual_seed(0)
    head = DraftHead.for_target(target, 1, torch.arange(384) if vocab is None else vocab)
    seqs = [p + solo(target, p) for p in PROMPTS[:2]]
    opt = torch.optim.Adam([p for p in head.parameters() if p.requires_grad], lr=3e-3)
    rows = target.lm_head.weight.detach()[head.vocab]  # (N, H)
    for _ in range(steps):
        for s in seqs:
            f = true_features(target, s)  # (T, H)
            x = target.model.embed_tokens(torch.tensor([s[1:]])).detach()
            logits = head(f[None, :-1], x)[0] @ rows.T  # (T-1, N): x_(i+2) from position i
            want = (f[1:] @ rows.T).argmax(-1)  # the target's choice among the draft's tokens
            loss = torch.nn.functional.cross_entropy(logits, want)
            opt.zero_grad()
            loss.backward()
            opt.step()
    return head.eval()


def true_features(target, tokens):
    """The target's final hidden states (T, H) of `tokens`, computed from scratch."""
    with torch.no_grad():
        return target(input_ids=torch.tensor([tokens]), output_hidden_states=True).hidden_states[-1][0]


class Recording(HeadDrafter):
    """A head drafter that also keeps every feature it is handed."""

    def __init__(self, head, target):
        super().__init__(head, target)
        self.log = []

    def fork(self):
        return Recording(self.head, self.target)

    def observe(self, hidden):
        self.log.append(hidden)
        super().observe(hidden)


def test_the_engine_hands_the_head_the_targets_features_and_drafting_is_incremental(target):
    head = make_head(target)
    batch = Batch(target, drafter=Recording(head_drafter(head, target).head, target), k=3, adaptive=False)
    batch.add([Request(p, max_new_tokens=40) for p in PROMPTS])
    for _ in range(6):
        batch.step()
    assert len(batch) == len(PROMPTS)
    drafted = sum(r.metrics.drafted for r in batch.rows)
    accepted = sum(r.metrics.accepted for r in batch.rows)
    assert drafted > 0 and 0 < accepted < drafted  # rejections happened: rolled-back positions exist
    for r in batch.rows:
        d = r.drafter
        got = torch.cat(d.log)  # (n, H): every position of the context but the last token's
        assert got.shape[0] == len(r.tokens) - 1
        torch.testing.assert_close(got, true_features(target, r.tokens[:-1]), atol=1e-4, rtol=1e-4)
        fresh = head_drafter(head, target)
        fresh.observe(true_features(target, r.tokens[:-1]))
        assert d.propose(r.tokens, 4, GREEDY, None)[0] == fresh.propose(r.tokens, 4, GREEDY, None)[0]


def test_speculative_output_with_a_head_equals_plain(target, alone):
    for vocab in (None, torch.tensor(sorted({t for a in alone for t in a[:20]}))):  # full, and a reduced vocabulary
        drafter = head_drafter(make_head(target, vocab), target)
        requests = [Request(p, max_new_tokens=30) for p in PROMPTS]
        assert batched(target, requests, drafter=drafter, adaptive=False) == alone
        assert sum(r.metrics.accepted for r in requests) > 0
        assert [solo(target, p, drafter=drafter) for p in PROMPTS] == alone


def test_seeded_sampling_with_a_head_draft_equals_it_alone(target):
    vocab = torch.arange(0, 384, 2)  # half the vocabulary: q is zero elsewhere
    drafter = head_drafter(make_head(target, vocab), target)
    s = Sampling(temperature=0.8, top_p=0.9)
    want = [solo(target, p, sampling=s, seed=10 + i, drafter=drafter) for i, p in enumerate(PROMPTS)]
    got = batched(target, [Request(p, sampling=s, seed=10 + i, max_new_tokens=30) for i, p in enumerate(PROMPTS)],
                  drafter=drafter)
    assert got == want
    fresh = head_drafter(make_head(target, vocab), target)
    fresh.observe(true_features(target, PROMPTS[0][:-1]))
    _, q = fresh.propose(PROMPTS[0], 3, s, torch.Generator().manual_seed(0))
    assert q.shape == (3, 384) and torch.allclose(q.sum(-1), torch.ones(3))
    assert (q[:, 1::2] == 0).all()  # nothing outside the draft's vocabulary


def test_an_int8_target_gets_an_int8_head_and_the_same_output(target):
    from spectune.quantize import Int8Linear, quantize_int8

    q8 = quantize_int8(copy.deepcopy(target))
    plain = [solo(q8, p) for p in PROMPTS]
    drafter = head_drafter(make_head(target), q8)
    assert isinstance(drafter.head.out, Int8Linear) and isinstance(drafter.head.fc, Int8Linear)
    assert batched(q8, [Request(p, max_new_tokens=30) for p in PROMPTS], drafter=drafter) == plain


def test_a_head_saves_and_loads_in_safetensors(target, tmp_path):
    head = make_head(target, torch.arange(100)).eval()
    head.save_pretrained(tmp_path / "h")
    assert sorted(p.name for p in (tmp_path / "h").iterdir()) == ["config.json", "draft_head.safetensors"]
    back = DraftHead.from_pretrained(tmp_path / "h")
    assert torch.equal(back.vocab, torch.arange(100)) and back.config.num_hidden_layers == 1
    feats, embeds = torch.randn(2, 5, 32), torch.randn(2, 5, 32)
    with torch.no_grad():
        torch.testing.assert_close(back(feats, embeds), head(feats, embeds))
    (tmp_path / "h/draft_head.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(SpectuneError, match="not a readable draft head"):
        DraftHead.from_pretrained(tmp_path / "h")
