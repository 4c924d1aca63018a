"""The task kinds: ner, classify, lm, mlm (masked-LM pre-training), and draft (distilling a
speculative-decoding draft for a target). Each knows its data, its head, its encoding, its loss and its metrics.

A task object is what the training loop, `eval` and `predict` talk to:
  read(path) -> examples; labels_from(examples); encode(examples) -> features;
  collate(features) -> batch; loss(model, batch); evaluate(model, features, examples) -> metrics.
Features for evaluation and prediction come from `eval_features` (a task may cut long inputs
differently there: NER's windows overlap).
"""

from __future__ import annotations

from ..errors import SpectuneError

TASKS = ("ner", "classify", "lm", "mlm", "draft")


def make_task(name: str, tokenizer, labels: list[str] | None = None, max_length: int = 256, **options):
    if name == "ner":
        from .token_classification import TokenClassification as cls
    elif name == "classify":
        from .sequence_classification import SequenceClassification as cls
    elif name == "lm":
        from .causal_lm import CausalLM as cls
    elif name == "mlm":
        from .masked_lm import MaskedLM as cls
    elif name == "draft" and options.get("kind") == "head":
        from .head_distill import HeadDistill as cls
    elif name == "draft":
        from .draft_distill import DraftDistill as cls
    else:
        raise SpectuneError(f"got {name!r}, expected one of: {', '.join(TASKS)}", where="task")
    return cls(tokenizer, labels=labels, max_length=max_length, **options)


def eval_features(task, examples) -> list[dict]:
    """Features to evaluate or predict on: the task's `encode_eval` where it has one, else `encode`."""
    return getattr(task, "encode_eval", task.encode)(examples)


def check_known_labels(found: list[tuple[str, str]], known: list[str], split: str) -> None:
    """Refuse a dev/test label the model was never trained on, naming it and where it is."""
    for label, where in found:
        if label not in known:
            raise SpectuneError(f"label {label!r} in the {split} file never occurs in the training file "
                                f"(training labels: {', '.join(known)})", where=where)


def pad(seqs: list[list[int]], value: int):
    """(B, T) long tensor, right-padded."""
    import torch

    width = max(len(s) for s in seqs)
    return torch.tensor([s + [value] * (width - len(s)) for s in seqs], dtype=torch.long)


def logits_of(model, batch):
    """The model's logits for a padded batch, without building a KV cache: training and scoring
    never reuse one, and decoders build it by default (a concatenation per layer per step)."""
    extra = {"use_cache": False} if getattr(getattr(model, "config", None), "use_cache", None) is not None else {}
    return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], **extra).logits
