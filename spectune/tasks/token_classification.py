"""Token classification (NER): word labels aligned to sub-tokens, long sentences windowed.

A word split into several sub-tokens carries its label on the first sub-token; the others get
-100 (ignored by the loss) and predictions are read back from first sub-tokens, one per word.
A sentence longer than the model's window is cut into consecutive windows at word boundaries,
so every word is labelled and predicted exactly once (never silently truncated).
With `crf=True` the words' scores feed a linear-chain CRF (spectune/crf.py): the loss is the
sequence's negative log-likelihood per word, and predictions are its Viterbi path; `ngram_features=N`
adds the CRF's own hashed n-gram scores of the words' token ids (spectune/ngrams.py).
"""

from __future__ import annotations

import torch

from ..data.conll import Sentence, read_tagged
from . import check_known_labels, logits_of, pad

IGNORE = -100


class TokenClassification:
    name = "ner"
    metric = "f1"  # entity-level F1 (seqeval), what papers quote
    metrics = ("f1", "precision", "recall", "loss")

    def __init__(self, tokenizer, labels=None, max_length=256, crf=False, ngram_features=0, **_):
        self.tok, self.labels, self.max_length, self.crf = tokenizer, labels, max_length, crf
        self.ngram_features = ngram_features
        self.scheme = None
        # The special tokens the tokenizer wraps any text in (BERT: [CLS] ... [SEP]; llama: none).
        with_sp = tokenizer("a", add_special_tokens=True).input_ids
        bare = tokenizer("a", add_special_tokens=False).input_ids
        at = next(i for i in range(len(with_sp)) if with_sp[i:i + len(bare)] == bare)
        self.prefix, self.suffix = with_sp[:at], with_sp[at + len(bare):]

    def read(self, path, split="train") -> list[Sentence]:
        sents, scheme = read_tagged(path)
        if split == "train":
            self.scheme = scheme
            if self.labels is None:
                self.labels = self.labels_from(sents)
        else:
            check_known_labels([(t, s.where) for s in sents for t in s.tags], self.labels, split)
        return sents

    @staticmethod
    def labels_from(sents) -> list[str]:
        tags = {t for s in sents for t in s.tags}
        return ["O"] + sorted(tags - {"O"}, key=lambda t: (t[2:], t[:2]))

    def model_class(self):
        from transformers import AutoModelForTokenClassification

        return AutoModelForTokenClassification

    def prepare_model(self, model):
        """The CRF layer on a freshly built (and tuned) model; its weights train with the encoder's."""
        if self.crf:
            from ..crf import attach

            attach(model, len(self.labels), self.ngram_features)
        return model

    def encode(self, sents: list[Sentence], overlap: bool = False) -> list[dict]:
        """Features of the sentences, a long one cut into windows of the model's length. Training
        windows follow each other; with `overlap` (evaluation and prediction) each window starts
        halfway through the previous one and a word is predicted by the window in which it sits
        farther from an edge: a word next to a cut would otherwise be tagged without the context on
        one side, and an entity across a cut split in two."""
        lid = {label: i for i, label in enumerate(self.labels)}
        budget = self.max_length - len(self.prefix) - len(self.suffix)
        feats = []
        for si, s in enumerate(sents):
            enc = self.tok(s.tokens, is_split_into_words=True, add_special_tokens=False)
            pieces: list[list[int]] = [[] for _ in s.tokens]
            for tid, w in zip(enc.input_ids, enc.word_ids(), strict=True):
                if w is not None:
                    pieces[w].append(tid)
            sizes = [len(p[:budget]) for p in pieces]
            windows, start = [], 0
            while start < len(sizes):
                end, size = start, 0
                while end < len(sizes) and (end == start or size + sizes[end] <= budget):
                    size += sizes[end]
                    end += 1
                windows.append([start, end])
                if end == len(sizes) or not overlap:
                    start = end
                    continue
                half, nxt = 0, start  # the next window starts where this one's first half ends
                while nxt < end - 1 and half + sizes[nxt] <= size // 2:
                    half += sizes[nxt]
                    nxt += 1
                start = max(nxt, start + 1)
            for i, (a, b) in enumerate(windows):
                # Owned words: up to the middle of the overlap with each neighbour.
                lo = a if i == 0 else (a + windows[i - 1][1]) // 2
                hi = b if i + 1 == len(windows) else (windows[i + 1][0] + b) // 2
                feats.append(self._feature(si, range(a, b), pieces, s.tags, lid, budget, range(lo, hi)))
        return feats

    def encode_eval(self, sents: list[Sentence]) -> list[dict]:
        return self.encode(sents, overlap=True)

    def _feature(self, si, words, pieces, tags, lid, budget, owned) -> dict:
        ids, labels, first = list(self.prefix), [IGNORE] * len(self.prefix), []
        for w in words:
            p = pieces[w][:budget]  # one absurdly long word is cut, not the sentence
            if not p:
                continue  # a word with no sub-tokens (e.g. a lone zero-width char): predicted O
            first.append((len(ids), w))
            ids += p
            labels += [lid[tags[w]]] + [IGNORE] * (len(p) - 1)
        ids += self.suffix
        labels += [IGNORE] * len(self.suffix)
        return {"input_ids": ids, "labels": labels, "sent": si, "first": first, "owned": (owned.start, owned.stop)}

    def collate(self, feats: list[dict]) -> dict:
        ids = pad([f["input_ids"] for f in feats], self.tok.pad_token_id or 0)
        return {"input_ids": ids, "attention_mask": pad([[1] * len(f["input_ids"]) for f in feats], 0),
                "labels": pad([f["labels"] for f in feats], IGNORE)}

    def loss(self, model, batch, logits=None) -> torch.Tensor:
        if logits is None:
            logits = logits_of(model, batch)  # (B, T, L)
        if self.crf:
            from ..added_layers import find
            from ..crf import words

            em, tags, mask, ids = words(logits, batch["labels"], batch["input_ids"])  # (B', W, L), (B', W) x3
            crf = find(model, "crf")
            return crf.nll(crf.emissions(em, ids, mask), tags, mask) / mask.sum()
        return torch.nn.functional.cross_entropy(logits.flatten(0, 1).float(), batch["labels"].flatten(),
                                                 ignore_index=IGNORE)

    @torch.no_grad()
    def predict(self, model, feats: list[dict], n_sents_words: list[int], batch_size=32, losses=None):
        """Word-level tags for each sentence (words without sub-tokens get O); batch losses go
        into `losses` when given, from the same forward pass."""
        out = [["O"] * n for n in n_sents_words]
        for i in range(0, len(feats), batch_size):
            chunk = feats[i:i + batch_size]
            b = self.collate(chunk)
            logits = logits_of(model, b)  # (B, T, L)
            if losses is not None:
                losses.append((float(self.loss(model, b, logits)), len(chunk)))
            if self.crf:
                from ..added_layers import find
                from ..crf import words

                em, _, mask, ids = words(logits, b["labels"], b["input_ids"])  # labelled = the `first` ones
                rows = [r for r, f in enumerate(chunk) if f["first"]]
                crf = find(model, "crf")
                paths = dict(zip(rows, crf.decode(crf.emissions(em, ids, mask), mask), strict=True))
                tags = [paths.get(r, []) for r in range(len(chunk))]  # (B, words) tag ids
            else:
                pred = logits.argmax(-1)  # (B, T)
                tags = [[int(pred[r, pos]) for pos, _ in f["first"]] for r, f in enumerate(chunk)]
            for f, row in zip(chunk, tags, strict=True):
                lo, hi = f["owned"]  # overlapping windows: each word from the window that owns it
                for (_, w), tag in zip(f["first"], row, strict=True):
                    if lo <= w < hi:
                        out[f["sent"]][w] = self.labels[tag]
        return out

    def evaluate(self, model, feats, sents) -> dict:
        from ..evaluate import ner_report

        losses: list[tuple[float, int]] = []
        pred = self.predict(model, feats, [len(s.tokens) for s in sents], losses=losses)
        report = ner_report([s.tags for s in sents], pred)
        report["loss"] = sum(v * n for v, n in losses) / max(sum(n for _, n in losses), 1)
        return report

