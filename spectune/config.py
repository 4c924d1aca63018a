"""Typed configs for every command, and their validation in one place.

Each command's options are one dataclass whose fields carry their documentation. The CLI flags
(`cli.py`) and YAML recipes (`--config FILE`) are both generated from these dataclasses, and both
go through `build()`, so a value is checked the same way whichever route it came by:
defaults < YAML file < command-line flags.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from .errors import SpectuneError

DEFAULT_CAUSAL_LM = "smollm2-135m"
Dtype = Literal["fp32", "bf16"]
COMPILE_HELP = ("torch.compile the decoder stack, for models without our decoding forward (Llama-family models "
                "decode on our kernels, faster, and skip it): fused small operations after 1-5 minutes of "
                "compiling at start")

# The draft options of `distill` and of `train --task draft / --distill-draft`, described once.
DRAFT_HELP = {
    "kind": "small (the target's first N layers, trained) or head (EAGLE-style, on the target's hidden states)",
    "layers": "layers of the draft (0: 2 for small, 1 for head)",
    "vocab": "a head drafts only the N most frequent tokens of the distillation data (0: the whole vocabulary); "
             "the output layer dominates a one-layer draft's cost",
    "new_tokens": "tokens the target answers each prompt with (the distillation data); 0: no answers, the texts "
                  "as they are (a chat's answers included), labelled off-policy",
}


def opt(default: Any = dataclasses.MISSING, help: str = "", **checks: Any) -> Any:
    """A documented field. `checks`: min, max (inclusive bounds), positional (CLI argument, no flag)."""
    return field(default=default, metadata={"help": help, **checks})


# ----------------------------------------------------------------------------------------------
# The commands' configs


@dataclass(kw_only=True)
class PrepareConfig:
    """`spectune models prepare`: resolve a model now, converting a GGUF into the cache once."""

    model: str = opt(help="alias (smollm2-135m, minilm-l6), model folder, .gguf file or hub id",
                     positional=True)
    dtype: Dtype = opt("fp32", help="dtype the converted weights are stored in (GGUF only); "
                                    "fp32 is exact, bf16 halves the size")
    force: bool = opt(False, help="convert again even if the cache already holds this model")


@dataclass(kw_only=True)
class ListConfig:
    """`spectune models list`: the embedded models and every cached conversion."""

    json: bool = opt(False, help="print JSON instead of a table")


@dataclass(kw_only=True)
class GenerateConfig:
    """`spectune generate`: continue a prompt, streaming the text as it comes."""

    model: str = opt(DEFAULT_CAUSAL_LM, help="alias, model folder, .gguf file or hub id")
    prompt: str | None = opt(None, help="the prompt; wrapped in the model's chat template unless --raw")
    prompts: str | None = opt(None, help="JSONL file of {\"id\", \"prompt\"} or {\"id\", \"messages\"} "
                                         "lines, answered in batches of --batch-size")
    out: str | None = opt(None, help="with --prompts: write the answers here as JSONL (default: stdout)")
    stop: list[str] | None = opt(None, help="stop when this text appears (repeatable); it is not included")
    raw: bool = opt(False, help="feed the prompt as is, without the chat template")
    system: str | None = opt(None, help="system message for the chat template "
                                        "(default: the template's own)")
    max_new_tokens: int = opt(128, help="stop after this many new tokens", min=1, max=1_000_000)
    temperature: float = opt(0.0, help="0 decodes greedily; above 0 samples", min=0.0, max=100.0)
    top_k: int = opt(0, help="sample only from the k most likely tokens (0: all)", min=0)
    top_p: float = opt(1.0, help="sample from the smallest set of tokens with this total "
                                 "probability (1: all)", min=0.0, max=1.0)
    repetition_penalty: float = opt(1.0, help="divide the logits of tokens already seen "
                                              "(1: off)", min=0.01, max=100.0)
    seed: int | None = opt(None, help="random seed for sampling, for reproducible output")
    dtype: Dtype = opt("fp32", help="compute dtype of the model")
    quantize: Literal["none", "int8"] = opt("none", help="int8: weight-only int8 linear layers (bf16 around them), "
                                                        "a quarter of the bytes read per token")
    compile: bool = opt(False, help=COMPILE_HELP)
    draft: str | None = opt(None, help="speculative decoding drafter: lookup (prompt n-grams), layers:N (the "
                                       "target's first N layers), or a model with the same tokenizer")
    num_beams: int = opt(1, help="beam search with this many beams (1: greedy or sampling); deterministic, "
                                 "no --draft", min=1, max=64)
    length_penalty: float = opt(1.0, help="with --num-beams: finished beams score sum_logprobs / length ** this",
                                min=-10.0, max=10.0)
    compare: bool = opt(False, help="with --draft and --prompt: decode plainly too and print both speeds, "
                                    "tau, acceptance, and whether the texts match")
    batch_size: int = opt(1, help="with --prompts: decode this many prompts together; a finished one's "
                                  "place goes to the next at once", min=1, max=256)
    truncate: Literal["error", "left"] = opt("error", help="a prompt that leaves no room for max_new_tokens "
                                                           "in the model's context: error, or drop its oldest tokens")
    skip_bad: bool = opt(False, help="with --prompts: report malformed lines on stderr and answer the others")

    def check(self) -> None:
        if self.top_p == 0.0:
            raise SpectuneError("must be above 0 (1 keeps every token)", where="top_p")
        if (self.prompt is None) == (self.prompts is None):
            raise SpectuneError("give exactly one of --prompt TEXT or --prompts FILE.jsonl", where="prompt")
        if self.prompt is not None and not self.prompt.strip():
            raise SpectuneError("is empty; give the text to continue", where="prompt")
        if self.stop and not all(self.stop):
            raise SpectuneError("an empty stop string would stop at once", where="stop")
        if self.num_beams > 1 and (self.temperature > 0 or self.draft):
            raise SpectuneError("beam search is deterministic and drafts nothing: use it with --temperature 0 and "
                                "without --draft", where="num_beams")
        if self.compare and (not self.draft or self.prompts):
            raise SpectuneError("compares plain and speculative decoding: give --draft and --prompt",
                                where="compare")


@dataclass(kw_only=True)
class ChatConfig:
    """`spectune chat`: talk with a model in the terminal, answers streamed."""

    model: str = opt(DEFAULT_CAUSAL_LM, help="alias, model folder, .gguf file or hub id")
    draft: str | None = opt(None, help="speculative decoding drafter (as in generate --draft)")
    dtype: Dtype = opt("fp32", help="compute dtype of the model")
    quantize: Literal["none", "int8"] = opt("none", help="int8: weight-only int8 linear layers (bf16 around them), "
                                                        "a quarter of the bytes read per token")
    compile: bool = opt(False, help=COMPILE_HELP)
    system: str | None = opt(None, help="system message (default: the chat template's own)")
    max_new_tokens: int = opt(256, help="longest answer, in tokens", min=1, max=1_000_000)
    temperature: float = opt(0.0, help="0 decodes greedily; above 0 samples", min=0.0, max=100.0)
    top_k: int = opt(0, help="sample only from the k most likely tokens (0: all)", min=0)
    top_p: float = opt(1.0, help="nucleus sampling mass (1: all)", min=0.0, max=1.0)
    repetition_penalty: float = opt(1.0, help="divide the logits of tokens already seen (1: off)", min=0.01,
                                    max=100.0)
    seed: int | None = opt(None, help="random seed for sampling")


@dataclass(kw_only=True)
class TrainConfig:
    """`spectune train`: fine-tune a model for a task; the run folder holds everything it made."""

    task: Literal["ner", "classify", "lm", "mlm", "draft"] | None = opt(
        None, help="ner (token classification), classify (one label per text), lm (causal-LM generation), mlm "
                   "(masked-LM pre-training of an encoder) or draft (see `distill`)")
    model: str | None = opt(None, help="base model: alias, folder, .gguf file or hub id; with --task mlm also "
                                       "scratch:ARCH-L<layers>-H<hidden>-A<heads> (a new "
                                       "bert, convbert or modernbert over the characters of --train)")
    train: str | None = opt(None, help="training file (ner: CoNLL or JSONL; classify: CSV/TSV/JSONL; lm: JSONL "
                                       "or .txt; mlm: .txt, or any of those, labels ignored)")
    dev: str | None = opt(None, help="validation file: early stopping and the best checkpoint use it")
    test: str | None = opt(None, help="test file, scored once at the end with the best checkpoint")
    out: str = opt(help="run folder (model, checkpoints, metrics.csv, curves.png, reports)")
    peft: Literal["full", "lora", "prompt", "freeze", "bitfit"] = opt("full", help="what trains")
    lora_r: int = opt(8, help="LoRA rank", min=1)
    lora_alpha: int = opt(16, help="LoRA scaling numerator (scale = alpha / r)", min=1)
    lora_dropout: float = opt(0.05, help="dropout on the LoRA branch", min=0.0, max=1.0)
    lora_targets: str = opt("all-linear", help="modules LoRA wraps: all-linear or names, comma-separated")
    prompt_tokens: int = opt(20, help="virtual tokens for prompt tuning", min=1)
    freeze_top_k: int = opt(2, help="with --peft freeze: train only the top k layers (and the head)", min=1)
    epochs: int = opt(3, help="passes over the training data", min=1)
    max_steps: int = opt(0, help="stop after this many optimizer steps (0: no limit)", min=0)
    batch_size: int = opt(16, help="examples per step per process", min=1)
    grad_accum: int = opt(1, help="micro-batches accumulated per optimizer step", min=1)
    lr: float = opt(5e-5, help="peak learning rate", min=0.0)
    optimizer: Literal["adamw", "sgd"] = opt("adamw", help="optimizer")
    weight_decay: float = opt(0.01, help="weight decay (never on biases and norms)", min=0.0)
    schedule: Literal["linear", "cosine", "constant"] = opt("linear", help="learning-rate schedule after warm-up")
    warmup_ratio: float = opt(0.06, help="fraction of the steps spent warming up", min=0.0, max=1.0)
    max_grad_norm: float = opt(1.0, help="clip gradients to this norm (0: off)", min=0.0)
    dropout: float | None = opt(None, help="override every dropout probability of the model", min=0.0, max=1.0)
    distill_draft: bool = opt(False, help="with --task lm: then distil a speculative-decoding draft for the "
                                          "fine-tuned model into OUT/draft (prompts from --train and --dev)")
    draft_kind: Literal["small", "head"] = opt("small", help="with --task draft or --distill-draft: "
                                                             + DRAFT_HELP["kind"])
    draft_layers: int = opt(0, help="with --task draft: " + DRAFT_HELP["layers"], min=0)
    draft_vocab: int = opt(0, help="with --task draft: " + DRAFT_HELP["vocab"], min=0)
    draft_new_tokens: int = opt(64, help="with --task draft: " + DRAFT_HELP["new_tokens"], min=0, max=4096)
    max_length: int = opt(256, help="tokens per example (NER: longer sentences are windowed)", min=8)
    bf16: bool = opt(False, help="bf16 autocast for forward and backward")
    group_by_length: bool = opt(False, help="batch examples of similar length (shuffled in groups of 50 batches, "
                                            "each sorted by length): far less padding when lengths vary")
    seed: int = opt(42, help="seed for initialisation, shuffling and dropout")
    eval_every: int = opt(0, help="evaluate every N optimizer steps (0: once per epoch)", min=0)
    metric: str | None = opt(None, help="dev metric for early stopping and the best checkpoint "
                                        "(default: ner f1, classify accuracy, lm loss)")
    patience: int = opt(0, help="stop after this many evaluations without improvement (0: never)", min=0)
    save_every: int = opt(0, help="also write the resumable checkpoint every N steps (0: at evaluations)", min=0)
    resume: bool = opt(False, help="continue the run in --out from its last checkpoint, with the options it "
                                   "was started with (`spectune train --out RUN --resume` is enough)")
    text_column: str = opt("text", help="classify: column of the texts")
    label_column: str = opt("label", help="classify: column of the labels")
    class_weights: bool = opt(False, help="classify: weight the loss by inverse class frequency")
    crf: bool = opt(False, help="ner: a linear-chain CRF output layer (tag transitions learnt, Viterbi decoding)")
    crf_lr: float = opt(1e-2, help="with --crf: peak learning rate of the CRF's transition scores", min=0.0)
    ngram_features: int = opt(0, help="ner (with --crf) and classify: a table of token-id n-gram scores, hashed into "
                                      "this many rows (e.g. 1048576; 0: off), added to the model's: ner, each word's "
                                      "unigrams at +-2 and 4 bigrams; classify, the text's 1-3-grams", min=0)
    ngram_lr: float = opt(1e-2, help="with --ngram-features: peak learning rate of the n-gram table", min=0.0)
    max_train_examples: int = opt(0, help="use only the first N training examples (0: all)", min=0)
    max_eval_examples: int = opt(0, help="use only the first N dev and test examples (0: all)", min=0)
    quiet: bool = opt(False, help="no progress bar")

    def check(self) -> None:
        missing = [f for f in ("task", "model", "train") if getattr(self, f) is None]
        if missing and not self.resume:  # a resumed run takes them from its spectune.json
            raise SpectuneError(f"missing required option(s): {', '.join(missing)}")
        if self.patience and not self.dev:
            raise SpectuneError("early stopping needs a dev file (--dev)", where="patience")
        from .scratch import is_scratch, parse

        if is_scratch(self.model):
            parse(self.model)
            if self.task not in ("mlm", None):
                raise SpectuneError("a scratch model starts untrained: pre-train it with --task mlm, then fine-tune "
                                    "RUN/model", where="model")
            if self.peft != "full":
                raise SpectuneError("a scratch model has no pretrained weights to keep frozen: use --peft full",
                                    where="peft")
        if self.crf and self.task not in ("ner", None):
            raise SpectuneError("a CRF layer labels token sequences: use it with --task ner", where="crf")
        if self.ngram_features and self.task not in ("ner", "classify", None):
            raise SpectuneError("n-gram features score labels: use them with --task ner (and --crf) or classify",
                                where="ngram_features")
        if self.ngram_features and self.task == "ner" and not self.crf:
            raise SpectuneError("NER's n-gram features are scored by the CRF layer: add --crf", where="ngram_features")
        if self.draft_vocab and self.draft_kind != "head":
            raise SpectuneError("a reduced draft vocabulary is built for --draft-kind head (distill --kind head)",
                                where="draft_vocab")
        if self.distill_draft and self.task not in ("lm", None):
            raise SpectuneError("a draft speeds up generation: use it with --task lm", where="distill_draft")


@dataclass(kw_only=True)
class DistillConfig:
    """`spectune distill`: train a speculative-decoding draft that matches a (fine-tuned) target."""

    target: str | None = opt(None, help="the target: alias, model folder, .gguf, hub id, or an lm run folder")
    data: str | None = opt(None, help="training prompts: JSONL {\"prompt\"} / {\"messages\"} (a final assistant "
                                      "turn is dropped, unless --new-tokens 0) or .txt, one prompt per line")
    dev: str | None = opt(None, help="dev prompts: early stopping on greedy agreement with the target")
    out: str = opt(help="the draft's run folder (use it as --draft OUT)")
    kind: Literal["small", "head"] = opt("small", help=DRAFT_HELP["kind"])
    layers: int = opt(0, help=DRAFT_HELP["layers"], min=0)
    vocab: int = opt(0, help=DRAFT_HELP["vocab"], min=0)
    new_tokens: int = opt(64, help=DRAFT_HELP["new_tokens"], min=0, max=4096)
    epochs: int = opt(3, help="passes over the prompts", min=1)
    max_steps: int = opt(0, help="stop after this many optimizer steps (0: no limit)", min=0)
    batch_size: int = opt(8, help="sequences per step", min=1)
    lr: float = opt(0.0, help="peak learning rate (0: 3e-4 for small, 2e-3 for head)", min=0.0)
    max_length: int = opt(320, help="prompt + answer tokens kept per sequence", min=16)
    max_train_examples: int = opt(0, help="use only the first N prompts (0: all)", min=0)
    max_eval_examples: int = opt(0, help="use only the first N dev prompts (0: all)", min=0)
    eval_every: int = opt(0, help="evaluate every N steps (0: every epoch)", min=0)
    patience: int = opt(0, help="stop after N evaluations without improvement (0: never)", min=0)
    save_every: int = opt(0, help="also checkpoint every N steps (0: at each evaluation)", min=0)
    seed: int = opt(0, help="random seed")
    resume: bool = opt(False, help="continue the run in --out from its last checkpoint")
    quiet: bool = opt(False, help="no progress bars")

    def check(self) -> None:
        if not self.resume and (self.target is None or self.data is None):
            raise SpectuneError("give --target and --data (or --resume)", where="target")

    def train_config(self) -> dict:
        """The same run as `spectune train --task draft`."""
        return {"task": "draft", "model": self.target, "train": self.data, "dev": self.dev, "out": self.out,
                "draft_kind": self.kind, "draft_layers": self.layers, "draft_vocab": self.vocab,
                "draft_new_tokens": self.new_tokens, "epochs": self.epochs,
                "max_steps": self.max_steps, "batch_size": self.batch_size,
                "lr": self.lr or (2e-3 if self.kind == "head" else 3e-4),
                "max_length": self.max_length, "max_train_examples": self.max_train_examples,
                "max_eval_examples": self.max_eval_examples, "eval_every": self.eval_every,
                "patience": self.patience, "save_every": self.save_every, "seed": self.seed,
                "resume": self.resume, "quiet": self.quiet,
                "weight_decay": 0.0, "warmup_ratio": 0.03}


@dataclass(kw_only=True)
class EvalConfig:
    """`spectune eval`: score a trained run on a labelled file."""

    model: str = opt(help="run folder made by `spectune train`")
    data: str = opt(help="labelled file in the run's task format")
    json: str | None = opt(None, help="also write the report as JSON here")
    batch_size: int = opt(32, help="examples per forward pass", min=1)


@dataclass(kw_only=True)
class PredictConfig:
    """`spectune predict`: run a trained model on new input, one prediction per line."""

    model: str = opt(help="run folder made by `spectune train`")
    input: str = opt(help="file of inputs, or - for stdin (ner: one sentence per line, tokens split on "
                          "spaces; classify: one text per line; lm: one prompt per line)")
    max_new_tokens: int = opt(64, help="lm: tokens to generate per prompt", min=1)


@dataclass(kw_only=True)
class MergeConfig:
    """`spectune merge`: fold a LoRA run into a plain model folder transformers loads alone."""

    model: str = opt(help="run folder made by `spectune train --peft lora`")
    out: str = opt(help="folder to write")


@dataclass(kw_only=True)
class ExportConfig:
    """`spectune export`: a run or model as a plain Hugging Face folder (transformers, vLLM)."""

    model: str = opt(help="run folder of `spectune train`, or a model (alias, .gguf, folder)")
    out: str = opt(help="folder to write (must not exist)")
    merge_lora: bool = opt(False, help="fold a LoRA run's adapter into the base weights")
    draft: str | None = opt(None, help="a draft run of `spectune distill` for this model, written to OUT/draft "
                                       "(default: RUN/draft when the run has one)")


@dataclass(kw_only=True)
class DataPrepareConfig:
    """`spectune data prepare`: write a bundled real corpus as train/dev/test files."""

    name: Literal["pd1998-ner", "chn-sentiment", "chatterbot-topics", "chatterbot-chat", "chitchat"] = opt(
        help="corpus to prepare", positional=True)
    out: str = opt(help="folder for train/dev/test files")


# ----------------------------------------------------------------------------------------------
# Validation: the one place every value goes through


@dataclass(kw_only=True)
class ServeConfig:
    """`spectune serve`: an OpenAI-compatible HTTP server for a model and fine-tuned runs."""

    model: str = opt(DEFAULT_CAUSAL_LM, help="generation model: alias, folder, .gguf, hub id, an lm run folder "
                                             "of `spectune train`, or none")
    name: str | None = opt(None, help="the model name clients send (default: --model as given)")
    draft: str | None = opt(None, help="speculative decoding drafter for generation (as in generate --draft)")
    dtype: Dtype = opt("fp32", help="compute dtype of the generation model")
    quantize: Literal["none", "int8"] = opt("none", help="int8: weight-only int8 linear layers (bf16 around them), "
                                                        "a quarter of the bytes read per token")
    compile: bool = opt(False, help=COMPILE_HELP)
    task_model: list[str] | None = opt(None, help="NAME=RUN_DIR: a classify or ner run served on /v1/classify "
                                                  "or /v1/ner under NAME (repeatable)")
    host: str = opt("127.0.0.1", help="address to bind; the default takes connections from this machine only")
    port: int = opt(8000, help="port to bind (0: any free port, printed at start)", min=0, max=65535)
    api_key: str | None = opt(None, help="require 'Authorization: Bearer KEY' on every endpoint but /health "
                                         "(default: the SPECTUNE_API_KEY environment variable)")
    max_batch: int = opt(8, help="generation requests decoded together (1: one at a time)", min=1, max=256)
    max_queue: int = opt(64, help="requests that may wait for a batch slot; beyond, 429 with Retry-After",
                         min=0, max=100_000)
    max_tokens: int = opt(1024, help="cap on a request's max_tokens", min=1, max=1_000_000)
    default_max_tokens: int = opt(256, help="max_tokens of a request that does not say", min=1, max=1_000_000)
    max_prompt_tokens: int = opt(4096, help="cap on a request's prompt, in tokens", min=1, max=1_000_000)
    max_body_bytes: int = opt(1_048_576, help="cap on a request body, in bytes (413 beyond)", min=1024)
    shutdown_timeout: float = opt(30.0, help="on SIGTERM, seconds to let in-flight requests finish", min=0.0)

    def check(self) -> None:
        for spec in self.task_model or []:
            name, sep, path = spec.partition("=")
            if not sep or not name.strip() or not path.strip():
                raise SpectuneError(f"got {spec!r}, expected NAME=RUN_DIR", where="task_model")
        if self.model == "none" and not self.task_model:
            raise SpectuneError("nothing to serve: give a generation --model or a --task-model", where="model")


def fields_of(cls: type) -> list[tuple[dataclasses.Field, Any]]:
    """(field, resolved type) pairs of a config class, in declaration order."""
    hints = typing.get_type_hints(cls)
    return [(f, hints[f.name]) for f in dataclasses.fields(cls)]


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """`value` (from YAML or a flag's string) as type `tp`, or a SpectuneError naming `where`."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            if type(None) in args:
                return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], where)
    if origin is Literal:
        if value not in args:
            raise SpectuneError(f"got {value!r}, expected one of: {', '.join(map(str, args))}", where=where)
        return value
    if origin is list:
        items = value if isinstance(value, list) else [value]
        return [_coerce(v, args[0], where) for v in items]
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "yes", "1", "false", "no", "0"):
            return value.lower() in ("true", "yes", "1")
        raise SpectuneError(f"got {value!r}, expected true or false", where=where)
    if tp in (int, float):
        if isinstance(value, bool) or (tp is int and isinstance(value, float) and not value.is_integer()):
            raise SpectuneError(f"got {value!r}, expected {'an integer' if tp is int else 'a number'}",
                                where=where)
        try:
            return tp(value)
        except (TypeError, ValueError):
            raise SpectuneError(f"got {value!r}, expected {'an integer' if tp is int else 'a number'}",
                                where=where) from None
    if tp is str:
        if not isinstance(value, str | int | float) or isinstance(value, bool):
            raise SpectuneError(f"got {value!r}, expected a string", where=where)
        return str(value)
    raise TypeError(f"config type {tp!r} is not supported")  # our bug, not the user's


def coerce_values(cls: type, values: dict[str, Any], source: str = "",
                  lines: dict[str, int] | None = None) -> dict[str, Any]:
    """`values` checked against config `cls`: known names, right types, within bounds.

    `source` names where the values came from (a YAML file, or '' for flags) and `lines` maps keys
    to their line in it, so an error points at the exact place.
    """
    known = {f.name: (f, tp) for f, tp in fields_of(cls)}
    out = {}
    for key, value in values.items():
        name = key.replace("-", "_")
        line = (lines or {}).get(key)
        where = f"{source}:{line}: {name}" if line else f"{source}: {name}" if source else name
        if name not in known:
            close = difflib.get_close_matches(name, known, n=1)
            hint = f"; did you mean '{close[0]}'?" if close else f"; known: {', '.join(known)}"
            raise SpectuneError(f"unknown option{hint}", where=where)
        f, tp = known[name]
        value = _coerce(value, tp, where)
        lo, hi = f.metadata.get("min"), f.metadata.get("max")
        if value is not None and ((lo is not None and value < lo) or (hi is not None and value > hi)):
            bounds = f"at least {lo}" if hi is None else f"between {lo} and {hi}"
            raise SpectuneError(f"got {value}, expected {bounds}", where=where)
        out[name] = value
    return out


def build(cls: type, values: dict[str, Any], source: str = "", lines: dict[str, int] | None = None):
    """An instance of config `cls` from `values`, every field checked, cross-field checks run."""
    kwargs = coerce_values(cls, values, source, lines)
    missing = [f.name for f in dataclasses.fields(cls) if f.name not in kwargs and _no_default(f)]
    if missing:
        flags = ", ".join(m.replace("_", "-") for m in missing)
        raise SpectuneError(f"missing required option(s): {flags}", where=source or None)
    cfg = cls(**kwargs)
    if hasattr(cfg, "check"):
        cfg.check()
    return cfg


def _no_default(f: dataclasses.Field) -> bool:
    return f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING


def load_yaml(path: str | Path) -> tuple[dict[str, Any], dict[str, int]]:
    """A YAML recipe's top-level mapping and the line of each key, or a one-line error."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise SpectuneError(f"cannot read config file: {e.strerror}", where=str(path)) from None
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f"{path}:{mark.line + 1}" if mark else str(path)
        raise SpectuneError(f"invalid YAML: {getattr(e, 'problem', None) or e}", where=at) from None
    if data is None:
        return {}, {}
    if not isinstance(data, dict):
        raise SpectuneError("expected a mapping of option: value at the top level", where=str(path))
    lines = {k.value: k.start_mark.line + 1 for k, _ in node.value} if node is not None else {}
    return data, lines
