"""Text generation for users: prompt formatting (chat template or raw), explicit settings, the
context check, streaming text with stop strings, and files of prompts answered in batches. The
decoding itself is our engine's (decode/engine.py), plain or speculative."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from dataclasses import dataclass, replace

from .config import GenerateConfig, build
from .errors import SpectuneError
from .loading import load_model, load_tokenizer, torch_dtype


@dataclass
class GenerationResult:
    text: str
    new_tokens: int
    seconds: float
    speculative: dict | None = None  # drafted, accepted, acceptance, target_passes, tau, per position
    finish_reason: str = "stop"  # "stop" (EOS or a stop string), "length", "cancelled"
    prompt_tokens: int = 0


def prompt_ids(tokenizer, prompt: str | list[dict], *, raw: bool = False, system: str | None = None,
               answered: bool = False):
    """Token ids (1, T) for a prompt (text, or chat messages): wrapped in the chat template when the
    tokenizer has one. `answered`: a whole chat, its answers included, with no generation prompt after it."""
    if not isinstance(prompt, str):
        messages = prompt
        if not getattr(tokenizer, "chat_template", None):  # no template: the turns' text, one per line
            return tokenizer("\n".join(m["content"] for m in messages), return_tensors="pt").input_ids
    elif raw or not getattr(tokenizer, "chat_template", None):
        return tokenizer(prompt, return_tensors="pt").input_ids
    else:
        messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=not answered)
    # The template already holds every special token; adding BOS again would shift the prompt.
    return tokenizer(text, add_special_tokens=False, return_tensors="pt").input_ids


class Generator:
    """A loaded model and tokenizer, ready to answer many prompts, one at a time or batched."""

    def __init__(self, model: str = "smollm2-135m", dtype: str = "fp32", draft: str | None = None,
                 quantize: str = "none", compile: bool = False, batched: bool = False):
        from .decode.drafters import make_drafter
        from .run import is_run, load_generation_model

        self.model_spec = model
        if is_run(model):  # a fine-tuned lm run of `spectune train` (a LoRA adapter is merged)
            from pathlib import Path

            from .loading import tokenizer_from_folder

            self.tokenizer = tokenizer_from_folder(Path(model) / "model")
            self.model = load_generation_model(model)
            if dtype == "bf16":
                self.model.to(torch_dtype("bf16"))
        else:
            self.tokenizer = load_tokenizer(model)
            self.model = load_model(model, dtype=dtype)
        if quantize == "int8":
            from .quantize import quantize_int8

            quantize_int8(self.model)
        elif quantize != "none":
            raise SpectuneError(f"got {quantize!r}, expected none or int8", where="quantize")
        from . import cpu_kernel
        from .decode import lean_llama

        lean = lean_llama.install(self.model)  # the decoding forward for Llama-family models (others keep theirs)
        self.drafter = make_drafter(draft, self.model, model)  # after quantizing: layers:N shares the int8 layers
        self._setup()
        if compile and lean and cpu_kernel.available():
            # A compiled forward has to leave the C kernels out; in a side run here (int8 SmolLM2) it
            # decoded about 47 tokens/s against 70 with the kernels.
            print("spectune: --compile not needed: the lean forward's kernels decode faster than a compiled forward",
                  file=sys.stderr)
        elif compile:  # after the drafter: a layers:N draft copies the decoder stack before it is compiled
            from .decode.compiled import compile_model, warm_up

            compile_model(self.model)
            warm_up(self.model, batched=batched, speculative=self.drafter is not None)

    @classmethod
    def from_loaded(cls, model, tokenizer, name: str = "loaded", drafter=None) -> Generator:
        """Wrap a model already in memory (a fine-tuned run, a peft model)."""
        gen = cls.__new__(cls)
        gen.model_spec, gen.model, gen.tokenizer, gen.drafter = name, model.eval(), tokenizer, drafter
        gen._setup()
        return gen

    def _setup(self) -> None:
        eos = self.model.generation_config.eos_token_id
        if eos is None:
            eos = self.tokenizer.eos_token_id
        self.eos = set(eos if isinstance(eos, list) else [] if eos is None else [eos])
        self.context = getattr(self.model.config, "max_position_embeddings", None)
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        self.last = GenerationResult("", 0, 0.0)

    def settings(self, **options) -> GenerateConfig:
        """Options (GenerateConfig fields) checked in one place, as the CLI checks its flags."""
        return build(GenerateConfig, {"model": self.model_spec, "prompt": "(given separately)", **options})

    def request(self, prompt: str | list[dict], cfg: GenerateConfig):
        """The engine's Request for a prompt (text or chat messages) under settings `cfg`."""
        from .decode.engine import Request
        from .decode.sampling import Sampling

        ids = prompt_ids(self.tokenizer, prompt, raw=cfg.raw, system=cfg.system)[0].tolist()
        if not ids:
            raise SpectuneError("is empty once tokenized; give the text to continue", where="prompt")
        if self.context and len(ids) + cfg.max_new_tokens > self.context:
            if cfg.truncate != "left" or cfg.max_new_tokens >= self.context:
                raise SpectuneError(f"the prompt is {len(ids)} tokens; with max_new_tokens {cfg.max_new_tokens} "
                                    f"that exceeds the model's context of {self.context} tokens; shorten the "
                                    "prompt, lower max_new_tokens, or truncate it on the left", where="prompt")
            ids = ids[len(ids) + cfg.max_new_tokens - self.context:]  # keep the most recent tokens
        return Request(ids, Sampling(cfg.temperature, cfg.top_k, cfg.top_p, cfg.repetition_penalty),
                       cfg.max_new_tokens, set(self.eos), cfg.seed)

    def _result(self, request, text: str) -> GenerationResult:
        m = request.metrics
        return GenerationResult(text, m.new_tokens, m.seconds, m.as_dict() if self.drafter is not None else None,
                                request.finish_reason or "stop", len(request.prompt))

    def stream(self, prompt: str | list[dict], **options) -> Iterator[str]:
        """Yield the new text piece by piece as it is decoded. `prompt`: text or chat messages;
        `options`: GenerateConfig fields."""
        from .decode.engine import Batch
        from .decode.text import TextStream

        cfg = self.settings(**options)
        if self.drafter is not None and cfg.num_beams > 1:
            raise SpectuneError("beam search drafts nothing: use a Generator without a draft", where="num_beams")
        request = self.request(prompt, cfg)
        text = TextStream(self.tokenizer, cfg.stop)
        if cfg.num_beams > 1:
            yield from self._beams(request, cfg, text)
            return
        batch = Batch(self.model, drafter=self.drafter, pad_id=self.pad_id)
        self.last = GenerationResult("", 0, 0.0)
        try:
            events = batch.add([request])
            while True:
                for _, tokens in events:
                    piece = text.follow(request, tokens)
                    if piece:
                        yield piece
                if request.finish_reason is not None:
                    return
                events = batch.step()
        finally:  # also when the caller stops reading early
            self.last = self._result(request, text.text)

    def _beams(self, request, cfg: GenerateConfig, text) -> Iterator[str]:
        """Beam search: the best hypothesis is known only at the end, so it comes as one piece."""
        import time

        from .decode.beam import beam_search

        t0 = time.perf_counter()
        tokens, _ = beam_search(self.model, request.prompt, beams=cfg.num_beams, max_new_tokens=cfg.max_new_tokens,
                                eos=request.eos, length_penalty=cfg.length_penalty)
        m = request.metrics
        m.new_tokens, m.seconds = len(tokens), time.perf_counter() - t0
        request.finish_reason = "stop" if tokens and tokens[-1] in request.eos else "length"
        piece = text.feed(tokens) + text.finish()
        self.last = self._result(request, text.text)
        if piece:
            yield piece

    def generate(self, prompt: str | list[dict], **options) -> GenerationResult:
        """The whole continuation at once, with its token count and time."""
        for _ in self.stream(prompt, **options):
            pass
        return replace(self.last)

    def generate_many(self, prompts: list, batch_size: int = 8, **options) -> Iterator[tuple[int, GenerationResult]]:
        """(index, result) for each prompt as it finishes, decoding up to `batch_size` together; a
        finished row's place is taken by the next prompt at once (continuous batching)."""
        from .decode.engine import Batch
        from .decode.text import TextStream

        cfg = self.settings(**options)
        if cfg.num_beams > 1:  # beams are rows of their own: prompts go one at a time
            for i, p in enumerate(prompts):
                yield i, self.generate(p, **options)
            return
        requests = [self.request(p, cfg) for p in prompts]  # every prompt checked before any decoding
        batch = Batch(self.model, drafter=self.drafter, pad_id=self.pad_id)
        texts, index = {}, {}
        pending = list(range(len(requests)))[::-1]
        while pending or batch:
            room = [pending.pop() for _ in range(min(batch_size - len(batch), len(pending)))]
            for i in room:
                texts[id(requests[i])], index[id(requests[i])] = TextStream(self.tokenizer, cfg.stop), i
            events = batch.add([requests[i] for i in room]) if room else batch.step()
            for r, tokens in events:
                texts[id(r)].follow(r, tokens)
                if r.finish_reason is not None:
                    yield index[id(r)], self._result(r, texts[id(r)].text)


def answer_file(gen: Generator, path: str, out: str | None = None, *, batch_size: int = 1,
                skip_bad: bool = False, **options) -> int:
    """Answer every {"id", "prompt"} or {"id", "messages"} line of a JSONL file, one JSON line each,
    in the file's order. A bad line stops everything before any answer is written, unless
    `skip_bad`: then it is reported on stderr and the other lines are answered."""
    import json
    import sys

    from .data import read_jsonl

    bad: list[SpectuneError] = []
    rows = []
    for where, row in read_jsonl(path, bad=bad if skip_bad else None):
        if not isinstance(row.get("prompt"), str) and not isinstance(row.get("messages"), list):
            e = SpectuneError('expected {"id", "prompt": text} or {"id", "messages": [...]}', where=where)
            if not skip_bad:
                raise e
            bad.append(e)
            continue
        rows.append((where, row))
    cfg = gen.settings(**options)
    good = []
    for where, row in rows:  # prompts too long for the context are bad lines too
        try:
            gen.request(row.get("prompt") or row["messages"], cfg)
            good.append(row)
        except SpectuneError as e:
            if not skip_bad:
                raise SpectuneError(e.message, where=where) from None
            bad.append(SpectuneError(e.message, where=where))
    for e in bad:
        print(f"{e.where}: {e.message} (skipped)", file=sys.stderr)
    sink = open(out, "w", encoding="utf-8") if out else sys.stdout
    done: dict[int, GenerationResult] = {}
    written = 0
    try:
        for i, r in gen.generate_many([row.get("prompt") or row["messages"] for row in good], batch_size, **options):
            done[i] = r
            while written in done:  # answers leave in the file's order
                r, row = done.pop(written), good[written]
                spec = r.speculative or {}
                line = {"id": row.get("id"), "text": r.text, "new_tokens": r.new_tokens,
                        "drafted": spec.get("drafted", 0), "accepted": spec.get("accepted", 0),
                        "target_passes": spec.get("target_passes", r.new_tokens), "seconds": round(r.seconds, 3)}
                sink.write(json.dumps(line, ensure_ascii=False) + "\n")
                sink.flush()
                written += 1
    finally:
        if out:
            sink.close()
    return written


def generate(prompt: str, model: str = "smollm2-135m", **options) -> str:
    """One-shot convenience: load `model`, continue `prompt`, return the new text."""
    dtype = options.pop("dtype", "fp32")
    if not isinstance(prompt, str):
        raise SpectuneError(f"got {type(prompt).__name__}, expected a string", where="prompt")
    return Generator(model, dtype=dtype).generate(prompt, **options).text
