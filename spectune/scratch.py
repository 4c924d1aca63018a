"""A model that does not exist yet: `--model scratch:bert-L4-H256-A4` with `--task mlm`.

No Chinese encoder can be installed on these machines (FIELD_NOTES §1), so the toolkit can pre-train
its own: a BERT encoder of the given size, initialised at random, over a character vocabulary built
from the training file (every character seen at least `MIN_COUNT` times; the rest map to [UNK]).
Each character is one token, which is what Chinese NER labels (one tag per character) want, and
what makes a small vocabulary enough. The tokenizer is a plain `tokenizers` pipeline wrapped as a
transformers fast tokenizer, so the run's model folder reloads with `AutoTokenizer` like any other.

Spec: `scratch:<arch>[-L<layers>][-H<hidden>][-A<heads>]`, defaults L4, H256, A4 (feed-forward 4H).
Architectures: `bert` (post-norm, learnt positions), `convbert` (half the heads are span-based
convolutions, kernel 9: a local n-gram bias, which is what character features give a CRF), and
`modernbert` (pre-norm, rotary positions, local attention windows).
"""

from __future__ import annotations

import re
from collections import Counter

from .errors import SpectuneError

PREFIX = "scratch:"
ARCHS = ("bert", "convbert", "modernbert")
SPEC = re.compile(r"scratch:(?P<arch>[a-z]+)(?:-L(?P<layers>\d+))?(?:-H(?P<hidden>\d+))?(?:-A(?P<heads>\d+))?")
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
MIN_COUNT = 2
MAX_POSITIONS = 512


def is_scratch(spec) -> bool:
    return str(spec).startswith(PREFIX)


def parse(spec: str) -> dict:
    m = SPEC.fullmatch(spec.strip())
    if not m or m["arch"] not in ARCHS:
        raise SpectuneError(f"got {spec!r}, expected scratch:ARCH[-L<layers>][-H<hidden>][-A<heads>] with ARCH one "
                            f"of {', '.join(ARCHS)}, e.g. scratch:bert-L4-H256-A4", where="model")
    size = {"layers": int(m["layers"] or 4), "hidden": int(m["hidden"] or 256), "heads": int(m["heads"] or 4)}
    if min(size.values()) < 1 or size["hidden"] % size["heads"]:
        raise SpectuneError(f"got {spec!r}: layers, hidden and heads must be positive and hidden a multiple of "
                            "heads", where="model")
    return {"arch": m["arch"], **size}


def char_tokenizer(texts: list[str], min_count: int = MIN_COUNT):
    """A one-character-per-token BERT-style tokenizer ([CLS] text [SEP]) over the characters of `texts`."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    counts = Counter(c for t in texts for c in t if not c.isspace())
    chars = sorted(c for c, n in counts.items() if n >= min_count)
    vocab = {tok: i for i, tok in enumerate(SPECIALS + chars)}
    core = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    # Whitespace separates nothing but itself; every other character is its own token.
    core.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(),
                                                  pre_tokenizers.Split(Regex("."), behavior="isolated")])
    cls, sep = vocab["[CLS]"], vocab["[SEP]"]
    core.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
                                                        special_tokens=[("[CLS]", cls), ("[SEP]", sep)])
    return PreTrainedTokenizerFast(tokenizer_object=core, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                                   sep_token="[SEP]", mask_token="[MASK]", model_max_length=MAX_POSITIONS)


def encoder_config(spec: str, tokenizer, dropout: float | None = None):
    """The transformers config of a scratch spec for this tokenizer's vocabulary."""
    import transformers

    size = parse(spec)
    p = 0.1 if dropout is None else dropout
    common = dict(vocab_size=len(tokenizer), hidden_size=size["hidden"], num_hidden_layers=size["layers"],
                  num_attention_heads=size["heads"], intermediate_size=4 * size["hidden"],
                  max_position_embeddings=MAX_POSITIONS, pad_token_id=tokenizer.pad_token_id)
    if size["arch"] == "modernbert":
        return transformers.ModernBertConfig(**common, cls_token_id=tokenizer.cls_token_id,
                                             sep_token_id=tokenizer.sep_token_id, bos_token_id=tokenizer.cls_token_id,
                                             eos_token_id=tokenizer.sep_token_id, attention_dropout=p,
                                             embedding_dropout=p, mlp_dropout=p)
    if size["arch"] == "convbert":
        return transformers.ConvBertConfig(**common, embedding_size=size["hidden"], hidden_dropout_prob=p,
                                           attention_probs_dropout_prob=p)
    return transformers.BertConfig(**common, hidden_dropout_prob=p, attention_probs_dropout_prob=p)
