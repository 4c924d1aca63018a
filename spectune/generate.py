"""Text generation on `transformers.generate`, streamed piece by piece.

This is the simple, correct path of the foundation: prompt formatting (chat template or raw),
greedy or sampled decoding with explicit settings, and streaming. The fast decoding engine with
speculative decoding replaces the inner call later; the API here stays.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace

from .config import GenerateConfig, build
from .errors import SpectuneError
from .loading import load_model, load_tokenizer


@dataclass
class GenerationResult:
    text: str
    new_tokens: int
    seconds: float
    speculative: dict | None = None  # drafted, accepted, acceptance, target_passes, tau, per position


def prompt_ids(tokenizer, prompt: str | list[dict], *, raw: bool = False, system: str | None = None):
    """Token ids (1, T) for a prompt (text, or chat messages): wrapped in the chat template when the
    tokenizer has one."""
    if not isinstance(prompt, str):
        messages = prompt
        if not getattr(tokenizer, "chat_template", None):  # no template: the turns' text, one per line
            return tokenizer("\n".join(m["content"] for m in messages), return_tensors="pt").input_ids
    elif raw or not getattr(tokenizer, "chat_template", None):
        return tokenizer(prompt, return_tensors="pt").input_ids
    else:
        messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    # The template already holds every special token; adding BOS again would shift the prompt.
    return tokenizer(text, add_special_tokens=False, return_tensors="pt").input_ids


def generation_config(cfg: GenerateConfig, model, tokenizer):
    """Our settings, explicitly: nothing inherited from the model's generation_config.json defaults."""
    from transformers import GenerationConfig

    sample = cfg.temperature > 0
    eos = model.generation_config.eos_token_id
    if eos is None:
        eos = tokenizer.eos_token_id
    return GenerationConfig(
        max_new_tokens=cfg.max_new_tokens,
        do_sample=sample,
        temperature=cfg.temperature if sample else None,
        top_k=cfg.top_k if sample and cfg.top_k > 0 else None,
        top_p=cfg.top_p if sample and cfg.top_p < 1.0 else None,
        repetition_penalty=cfg.repetition_penalty if cfg.repetition_penalty != 1.0 else None,
        eos_token_id=eos,
        pad_token_id=tokenizer.pad_token_id,
    )


class Generator:
    """A loaded model and tokenizer, ready to answer many prompts."""

    def __init__(self, model: str = "smollm2-135m", dtype: str = "fp32", draft: str | None = None):
        from .decode.drafters import make_drafter

        self.model_spec = model
        self.tokenizer = load_tokenizer(model)
        self.model = load_model(model, dtype=dtype)
        # With a drafter, decoding goes through our engine (speculative); without, transformers.
        self.drafter = make_drafter(draft, self.model)

    @classmethod
    def from_loaded(cls, model, tokenizer, name: str = "loaded") -> Generator:
        """Wrap a model already in memory (a fine-tuned run, a peft model)."""
        gen = cls.__new__(cls)
        gen.model_spec, gen.model, gen.tokenizer, gen.drafter = name, model, tokenizer, None
        return gen

    def stream(self, prompt: str | list[dict], **options) -> Iterator[str]:
        """Yield the new text piece by piece as it is decoded. `prompt`: text or chat messages;
        `options`: GenerateConfig fields."""
        cfg = build(GenerateConfig, {"model": self.model_spec, "prompt": prompt if isinstance(prompt, str)
                                     else "(chat messages)", **options})
        ids = prompt_ids(self.tokenizer, prompt, raw=cfg.raw, system=cfg.system)
        pieces = self._stream_speculative(ids[0].tolist(), cfg) if self.drafter is not None else \
            self._stream_transformers(ids, cfg)
        if not cfg.stop:
            yield from pieces
            return
        # Hold back any tail that could begin a stop string; cut at the first one and stop decoding.
        text, sent = "", 0
        longest = max(len(x) for x in cfg.stop)
        for piece in pieces:
            text += piece
            hits = [i for i in (text.find(x) for x in cfg.stop) if i >= 0]
            if hits:
                if min(hits) > sent:
                    yield text[sent:min(hits)]
                pieces.close()
                self.last.text = text[:min(hits)]
                return
            safe = max(sent, len(text) - longest + 1)
            if safe > sent:
                yield text[sent:safe]
                sent = safe
        if len(text) > sent:
            yield text[sent:]

    def _stream_transformers(self, ids, cfg: GenerateConfig) -> Iterator[str]:
        from transformers import StoppingCriteria, StoppingCriteriaList, TextIteratorStreamer

        class Cancel(StoppingCriteria):
            """Set by the consumer when it stops reading (a stop string): generate ends after this token."""

            def __init__(self):
                self.flag = threading.Event()

            def __call__(self, input_ids, scores, **kwargs):
                import torch

                return torch.full((input_ids.shape[0],), self.flag.is_set(), dtype=torch.bool)

        cancel = Cancel()
        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True)
        gen_cfg = generation_config(cfg, self.model, self.tokenizer)
        failure: list[BaseException] = []
        self.last = GenerationResult("", 0, 0.0)

        def work() -> None:
            import torch

            t0 = time.perf_counter()
            try:
                if cfg.seed is not None:
                    torch.manual_seed(cfg.seed)
                with torch.inference_mode():
                    out = self.model.generate(ids, attention_mask=torch.ones_like(ids), generation_config=gen_cfg,
                                              streamer=streamer, stopping_criteria=StoppingCriteriaList([cancel]))
                self.last.new_tokens = out.shape[1] - ids.shape[1]
            except BaseException as e:  # surfaced in the caller's thread below
                failure.append(e)
                streamer.end()
            self.last.seconds = time.perf_counter() - t0

        thread = threading.Thread(target=work, daemon=True)
        thread.start()
        pieces = []
        try:
            for piece in streamer:
                if piece:
                    pieces.append(piece)
                    yield piece
        finally:  # also when the caller stops early (a stop string): let generate end at once
            cancel.flag.set()
            thread.join()
        if failure:
            raise failure[0]
        self.last.text = "".join(pieces)

    def _stream_speculative(self, ids: list[int], cfg: GenerateConfig) -> Iterator[str]:
        from .decode.engine import Metrics, decode
        from .decode.sampling import Sampling

        eos = self.model.generation_config.eos_token_id
        eos = set(eos if isinstance(eos, list) else [eos if eos is not None else self.tokenizer.eos_token_id])
        sampling = Sampling(cfg.temperature, cfg.top_k, cfg.top_p, cfg.repetition_penalty)
        m = Metrics()
        self.last = GenerationResult("", 0, 0.0)
        new: list[int] = []
        text = ""
        try:
            for chunk in decode(self.model, ids, sampling=sampling, max_new_tokens=cfg.max_new_tokens, eos=eos,
                                drafter=self.drafter, seed=cfg.seed, metrics=m):
                new += chunk
                full = self.tokenizer.decode(new, skip_special_tokens=True)
                if full.endswith("\ufffd"):
                    continue  # a character split across tokens: wait for its last byte
                if len(full) > len(text):
                    yield full[len(text):]
                text = full
        finally:  # also when the caller stops early (a stop string)
            self.last = GenerationResult(text, m.new_tokens, m.seconds, m.as_dict())

    def generate(self, prompt: str, **options) -> GenerationResult:
        """The whole continuation at once, with its token count and time."""
        for _ in self.stream(prompt, **options):
            pass
        return replace(self.last)


def answer_file(gen: Generator, path: str, out: str | None = None, **options) -> int:
    """Answer every {"id", "prompt"} or {"id", "messages"} line of a JSONL file, one JSON line each."""
    import json
    import sys

    from .data import read_jsonl

    rows = list(read_jsonl(path))  # a bad line is reported before any answer is written
    for where, row in rows:
        if not isinstance(row.get("prompt"), str) and not isinstance(row.get("messages"), list):
            raise SpectuneError('expected {"id", "prompt": text} or {"id", "messages": [...]}', where=where)
    sink = open(out, "w", encoding="utf-8") if out else sys.stdout
    try:
        for _, row in rows:
            r = gen.generate(row.get("prompt") or row["messages"], **options)
            spec = r.speculative or {}
            line = {"id": row.get("id"), "text": r.text, "new_tokens": r.new_tokens,
                    "drafted": spec.get("drafted", 0), "accepted": spec.get("accepted", 0),
                    "target_passes": spec.get("target_passes", r.new_tokens), "seconds": round(r.seconds, 3)}
            sink.write(json.dumps(line, ensure_ascii=False) + "\n")
            sink.flush()
    finally:
        if out:
            sink.close()
    return len(rows)


def generate(prompt: str, model: str = "smollm2-135m", **options) -> str:
    """One-shot convenience: load `model`, continue `prompt`, return the new text."""
    dtype = options.pop("dtype", "fp32")
    if not isinstance(prompt, str):
        raise SpectuneError(f"got {type(prompt).__name__}, expected a string", where="prompt")
    return Generator(model, dtype=dtype).generate(prompt, **options).text
