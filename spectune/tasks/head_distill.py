"""Distilling an EAGLE-style draft head (`spectune distill --kind head`), see draft_head.py.

The data is DraftDistill's (the target's own greedy answers to the prompts, its top-K next-token
probabilities at each answer position) plus the target's final hidden state at every position.
Head position i reads the target's feature f_i and the embedding of x_(i+1) and is trained,
teacher-forced, towards f_(i+1) (smooth L1, the regression of EAGLE) and towards the target's
distribution of x_(i+2) (cross-entropy against the soft labels, over the draft's vocabulary), at
every position: the prompt's too, and with `--new-tokens 0` whole texts (a chat's answers
included) labelled by the target without generating (off-policy, EAGLE's fixed-data training).
Training inputs carry a little uniform noise, as in EAGLE: when drafting, the head reads its own,
imperfect, predicted features from the second draft on, and each batch is also run a second time
with the head reading its own predictions (see `loss`). The dev metric is greedy agreement of the
first draft, teacher-forced: the acceptance of the first draft token; `agreement_own_features` is
the same from the head's own features (the later drafts' case).
"""

from __future__ import annotations

from collections import Counter

import torch

from ..errors import SpectuneError
from . import pad
from .draft_distill import TOP_K, DraftDistill

# Weight of the token loss beside the feature regression. EAGLE-1 used 0.1; here (SmolLM2-135M, 320
# chatterbot prompts, 3 epochs at lr 1e-3) 0.1 reached dev agreement 0.16 and 1.0 reached 0.32.
CE_WEIGHT = 1.0
NOISE = 0.2  # width of the uniform noise added to the training input features (EAGLE: U(-0.1, 0.1))


class HeadDistill(DraftDistill):
    def __init__(self, tokenizer, labels=None, max_length=256, target=None, target_model=None, layers=1,
                 new_tokens=64, vocab=0, **_):
        super().__init__(tokenizer, labels=labels, max_length=max_length, target=target, target_model=target_model,
                         layers=layers, new_tokens=new_tokens)
        self.vocab_limit = vocab
        self.counts: Counter | None = None  # token frequencies of the training sequences (the first encoded)
        self._out = None  # (vocab ids, index from target id to draft row, output rows (N, H)) of the model

    def model_class(self):
        from ..draft_head import DraftHead

        return DraftHead

    def build_model(self, dropout=None):
        from ..draft_head import DraftHead

        n = getattr(self.target.config, "num_hidden_layers", None)
        if n is None or not 1 <= self.layers < n:
            raise SpectuneError(f"got {self.layers}, expected 1 to {(n or 2) - 1} (the target has {n} layers)",
                                where="draft_layers")
        size = self.target.get_output_embeddings().weight.shape[0]
        if self.vocab_limit and self.counts:
            # The target's most frequent tokens in the training sequences (answers and the prompts they quote).
            ranked = sorted(self.counts, key=lambda t: (-self.counts[t], t))[: self.vocab_limit]
            vocab = torch.tensor(sorted(ranked))
        else:
            vocab = torch.arange(size)
        return DraftHead.for_target(self.target, self.layers, vocab)

    def prepare_model(self, model):
        model.body.get_input_embeddings().requires_grad_(False)  # `--peft full` marked it; it is never read
        return model

    def encode(self, prompts):
        feats = super().encode(prompts)
        if self.counts is None:  # the training split is encoded first; the vocabulary comes from it
            self.counts = Counter(t for f in feats for t in f["input_ids"])
        return feats

    @torch.no_grad()
    def _soft_labels(self, seqs, prompt_lens):
        batch = {"input_ids": pad(seqs, 0), "attention_mask": pad([[1] * len(s) for s in seqs], 0)}
        out = self.target(**batch, use_cache=False, output_hidden_states=True)
        hidden = out.hidden_states[-1]  # (B, T, H): post final norm, what the output layer reads
        # Soft labels at every position, the prompt's too: the head learns the target's next-token
        # function, whatever text it reads; `answer` marks where the target's own answer starts.
        rows = self._label_rows(out.logits.float(), seqs, [1] * len(seqs))
        for b, (row, seq) in enumerate(zip(rows, seqs, strict=True)):
            row["feats"] = hidden[b, : len(seq)].to(torch.float16)  # (T, H)
            row["answer"] = prompt_lens[b] - 1  # first label position of the answer
        return rows

    def collate(self, feats):
        batch = super().collate(feats)
        width, hidden = batch["input_ids"].shape[1], feats[0]["feats"].shape[1]
        batch["feats"] = torch.zeros((len(feats), width, hidden))  # (B, T, H)
        batch["answer"] = torch.zeros((len(feats), width), dtype=torch.bool)  # (B, T): labels of the answer
        for b, f in enumerate(feats):
            batch["feats"][b, : f["feats"].shape[0]] = f["feats"].float()
            batch["answer"][b, f["answer"] : f["feats"].shape[0] - 1] = True
        return batch

    def _rows(self, model):
        """(index (V,) from target token id to draft row or -1, output rows (N, H)) for this head."""
        if self._out is None or not torch.equal(self._out[0], model.vocab):
            weight = self.target.get_output_embeddings().weight.detach().float()
            index = torch.full((weight.shape[0],), -1, dtype=torch.long)
            index[model.vocab] = torch.arange(len(model.vocab))
            self._out = (model.vocab.clone(), index, weight[model.vocab])
        return self._out[1], self._out[2]

    def _predict(self, model, batch, previous=None):
        """Head outputs: (predicted features (B, T-1, H), logits over its vocab (B, T-1, N)). Teacher-forced,
        or (`previous`: a first pass's predictions) each position reading the head's own prediction of
        its feature, as the second and later drafts do."""
        feats = batch["feats"][:, :-1]  # (B, T-1, H): f_i
        if previous is not None:
            feats = torch.cat([feats[:, :1], previous[:, :-1]], 1)  # f^_i, predicted at position i-1
        if model.training:
            feats = feats + (torch.rand_like(feats) - 0.5) * NOISE
        embeds = self.target.get_input_embeddings()(batch["input_ids"][:, 1:]).detach().float()  # x_(i+1)
        pred = model(feats, embeds, attention_mask=batch["attention_mask"][:, 1:])  # (B, T-1, H)
        _, rows = self._rows(model)
        return pred, pred @ rows.T

    def _labels(self, model, batch):
        """Soft labels of x_(i+2) at head position i, mapped to the draft's vocabulary: ids, probs (B, T-1, K)."""
        index, _ = self._rows(model)
        ids = index[batch["top_ids"][:, 1:]]  # (B, T-1, K): -1 where the draft cannot say the token
        probs = batch["top_p"][:, 1:] * (ids >= 0)
        return ids.clamp(min=0), probs

    def loss(self, model, batch, reduction: str = "mean") -> torch.Tensor:
        """Two passes: teacher-forced, then reading its own predicted features (EAGLE-3's training-time
        test, simplified: the whole context predicted). Measured here on 320 chatterbot prompts, 6
        epochs: agreement of the second draft 0.20 -> 0.38, of the first unchanged (0.43 / 0.44)."""
        return self._loss(model, batch, self._passes(model, batch), reduction)

    def _passes(self, model, batch) -> list[tuple[torch.Tensor, torch.Tensor]]:
        first = self._predict(model, batch)
        return [first, self._predict(model, batch, previous=first[0])]

    def _loss(self, model, batch, passes, reduction: str) -> torch.Tensor:
        real = batch["attention_mask"][:, 1:].float()  # (B, T-1): positions with a next token
        labelled = (batch["top_p"][:, 1:].sum(-1) > 0).float()  # (B, T-1)
        ids, probs = self._labels(model, batch)
        total = 0.0
        for pred, logits in passes:
            reg = torch.nn.functional.smooth_l1_loss(pred, batch["feats"][:, 1:], reduction="none").mean(-1) * real
            ce = -(probs * torch.log_softmax(logits, -1).gather(-1, ids)).sum(-1)  # (B, T-1)
            if reduction == "sum":
                total = total + reg.sum() + CE_WEIGHT * ce.sum()
            else:
                total = total + reg.sum() / real.sum().clamp(min=1) + CE_WEIGHT * ce.sum() / labelled.sum().clamp(min=1)
        return total

    @torch.no_grad()
    def evaluate(self, model, feats, examples, batch_size=8) -> dict:
        agree = agree2 = total = covered = 0
        loss = 0.0
        for i in range(0, len(feats), batch_size):
            batch = self.collate(feats[i : i + batch_size])
            passes = self._passes(model, batch)
            (_, logits), (_, logits2) = passes
            index, _ = self._rows(model)
            answer = batch["answer"][:, 1:]  # (B, T-1): agreement where the target wrote its own answer
            top = index[batch["top_ids"][:, 1:, 0]]  # (B, T-1): the target's token as a draft row, -1 if absent
            agree += int(((logits.argmax(-1) == top) & answer).sum())
            agree2 += int(((logits2.argmax(-1) == top) & answer).sum())
            covered += int(((top >= 0) & answer).sum())
            total += int(answer.sum())
            loss += float(self._loss(model, batch, passes, "sum"))
        return {"task": "draft", "agreement": agree / max(total, 1), "agreement_own_features": agree2 / max(total, 1),
                "loss": loss / max(total, 1),
                "vocab_coverage": covered / max(total, 1), "positions": total, "soft_label_width": TOP_K}
