"""The `spectune` command. Its flags are generated from the typed configs in `config.py`.

Every sub-command takes `--config FILE.yaml` too; flags given on the command line win over the
file. A user's mistake ends in one line on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Literal

from . import __version__
from .config import (
    ChatConfig,
    DataPrepareConfig,
    DistillConfig,
    EvalConfig,
    ExportConfig,
    GenerateConfig,
    ListConfig,
    MergeConfig,
    PredictConfig,
    PrepareConfig,
    ServeConfig,
    TrainConfig,
    build,
    coerce_values,
    fields_of,
    load_yaml,
)
from .errors import SpectuneError, report


class _Parser(argparse.ArgumentParser):
    """argparse, but its usage errors are ours: one line, exit code 2."""

    def error(self, message: str) -> typing.NoReturn:
        raise SpectuneError(f"{message} (see '{self.prog} --help')")


def add_config_arguments(parser: argparse.ArgumentParser, cls: type) -> None:
    """One flag per documented field of `cls`; defaults are SUPPRESSed so we know what was given."""
    parser.add_argument("--config", metavar="FILE.yaml", default=argparse.SUPPRESS,
                        help="read options from a YAML file (flags given here win)")
    for f, tp in fields_of(cls):
        doc = f.metadata.get("help", "")
        if f.default not in (None, dataclasses.MISSING) and tp is not bool:
            doc += f" (default: {f.default})"
        if f.metadata.get("positional"):
            parser.add_argument(f.name, help=doc, metavar=f.name.upper())
            continue
        flag = "--" + f.name.replace("_", "-")
        if tp is bool:
            parser.add_argument(flag, action="store_true", default=argparse.SUPPRESS, help=doc)
            continue
        if list in (typing.get_origin(tp), *map(typing.get_origin, typing.get_args(tp))):
            parser.add_argument(flag, action="append", default=argparse.SUPPRESS, help=doc + " (repeatable)",
                                metavar=f.name.upper())
            continue
        choices = typing.get_args(tp) if typing.get_origin(tp) is Literal else None
        parser.add_argument(flag, default=argparse.SUPPRESS, help=doc, choices=choices,
                            metavar=f.name.upper() if choices is None else None)


def config_from_args(cls: type, ns: argparse.Namespace):
    """Defaults < YAML file < flags, every value validated by `config.build`."""
    given = {k: v for k, v in vars(ns).items() if not k.startswith("_")}
    path = given.pop("config", None)
    if path is None:
        return build(cls, given)
    values, lines = load_yaml(path)
    from_file = coerce_values(cls, values, source=str(path), lines=lines)
    return build(cls, {**from_file, **coerce_values(cls, given)})


# ----------------------------------------------------------------------------------------------
# Commands


def cmd_models_list(cfg: ListConfig) -> int:
    from .catalog import format_table, list_models

    rows = list_models()
    print(json.dumps(rows, indent=1) if cfg.json else format_table(rows))
    return 0


def cmd_models_prepare(cfg: PrepareConfig) -> int:
    from .models import resolve_model

    ref = resolve_model(cfg.model, dtype=cfg.dtype, force=cfg.force, progress=True)
    print(f"{ref.spec}: {ref.kind} ready at {ref.path}")
    return 0


def cmd_generate(cfg: GenerateConfig) -> int:
    from .generate import Generator

    gen = Generator(cfg.model, dtype=cfg.dtype, draft=cfg.draft, quantize=cfg.quantize, compile=cfg.compile,
                    batched=cfg.batch_size > 1 or cfg.num_beams > 1)
    options = {k: v for k, v in vars(cfg).items()
               if k not in ("model", "prompt", "prompts", "out", "dtype", "draft", "batch_size", "skip_bad",
                            "quantize", "compare", "compile")}
    if cfg.prompts:
        from .generate import answer_file

        answer_file(gen, cfg.prompts, cfg.out, batch_size=cfg.batch_size, skip_bad=cfg.skip_bad, **options)
        return 0
    plain = None
    if cfg.compare:  # the same model without its drafter first: the speed speculation is measured against
        drafter, gen.drafter = gen.drafter, None
        gen.generate(cfg.prompt, **{**options, "max_new_tokens": 2})  # warm-up: first calls allocate
        plain = gen.generate(cfg.prompt, **options)
        gen.drafter = drafter
    for piece in gen.stream(cfg.prompt, **options):
        sys.stdout.write(piece)
        sys.stdout.flush()
    print()
    r = gen.last
    if plain is not None:
        s = r.speculative
        print(f"[plain: {plain.new_tokens} tokens, {plain.new_tokens / plain.seconds:.1f} tokens/s | speculative "
              f"({cfg.draft}): {r.new_tokens} tokens, {r.new_tokens / r.seconds:.1f} tokens/s, "
              f"{r.new_tokens / r.seconds / (plain.new_tokens / plain.seconds):.2f}x, tau {s['tau']:.2f}, "
              f"acceptance {s['acceptance']:.0%} | same text: {'yes' if r.text == plain.text else 'NO'}]",
              file=sys.stderr)
        return 0
    rate = r.new_tokens / r.seconds if r.seconds else 0.0
    spec = ""
    if r.speculative:
        spec = (f", {r.speculative['accepted']}/{r.speculative['drafted']} drafts accepted, "
                f"tau {r.speculative['tau']:.2f} tokens per target pass")
    print(f"[{r.new_tokens} new tokens in {r.seconds:.2f} s, {rate:.1f} tokens/s{spec}]", file=sys.stderr)
    return 0


def cmd_distill(cfg: DistillConfig) -> int:
    values = cfg.train_config()
    if cfg.resume:
        values = {"out": cfg.out, "resume": True, "quiet": cfg.quiet}
    cmd_train(build(TrainConfig, values))  # the same run as `spectune train --task draft`
    print(f"use the draft with --draft {cfg.out}", file=sys.stderr)
    return 0


def cmd_chat(cfg: ChatConfig) -> int:
    from .terminal_chat import chat

    return chat(cfg)


def cmd_train(cfg: TrainConfig) -> int:
    from .train import train

    info = train(cfg)
    best = info.get("best") or {}
    if best.get("value") is not None:
        print(f"best dev {best['metric']}: {best['value']:.4f} at step {best['step']}", file=sys.stderr)
    print(f"run saved in {cfg.out}", file=sys.stderr)
    if cfg.distill_draft and cfg.task == "lm":  # the one-flag path: fine-tune, then a draft that matches it
        out = str(Path(cfg.out) / "draft")
        cmd_distill(build(DistillConfig, {"target": cfg.out, "data": cfg.train, "dev": cfg.dev, "out": out,
                                          "kind": cfg.draft_kind, "layers": cfg.draft_layers,
                                          "vocab": cfg.draft_vocab, "new_tokens": cfg.draft_new_tokens,
                                          "max_length": cfg.max_length, "seed": cfg.seed, "quiet": cfg.quiet,
                                          "resume": (Path(out) / "checkpoint-last").is_dir() and cfg.resume}))
    return 0


def cmd_eval(cfg: EvalConfig) -> int:
    from .evaluate import format_report
    from .train import evaluate_run

    print(format_report(evaluate_run(Path(cfg.model), data=cfg.data, name="eval", json_out=cfg.json)))
    return 0


def cmd_predict(cfg: PredictConfig) -> int:
    from .predict import predict

    for row in predict(cfg.model, cfg.input, max_new_tokens=cfg.max_new_tokens):
        print(json.dumps(row, ensure_ascii=False), flush=True)
    return 0


def cmd_merge(cfg: MergeConfig) -> int:
    from .export import merge

    print(f"merged model written to {merge(cfg.model, cfg.out)}")
    return 0


def cmd_export(cfg: ExportConfig) -> int:
    from .export import export

    print(f"exported to {export(cfg.model, cfg.out, cfg.merge_lora, cfg.draft)}")
    return 0


def cmd_data_prepare(cfg: DataPrepareConfig) -> int:
    from .data.corpora import prepare

    counts = prepare(cfg.name, cfg.out)
    for split, c in counts.items():
        print(f"{split:>8}: " + ", ".join(f"{k} {v:,}" for k, v in c.items()))
    print(f"written to {cfg.out}")
    return 0


def cmd_serve(cfg: ServeConfig) -> int:
    from .serve.run import serve

    return serve(cfg)


COMMANDS: dict[tuple[str, ...], tuple[type, Callable[..., int]]] = {
    ("models", "list"): (ListConfig, cmd_models_list),
    ("models", "prepare"): (PrepareConfig, cmd_models_prepare),
    ("generate",): (GenerateConfig, cmd_generate),
    ("chat",): (ChatConfig, cmd_chat),
    ("distill",): (DistillConfig, cmd_distill),
    ("train",): (TrainConfig, cmd_train),
    ("eval",): (EvalConfig, cmd_eval),
    ("predict",): (PredictConfig, cmd_predict),
    ("merge",): (MergeConfig, cmd_merge),
    ("data", "prepare"): (DataPrepareConfig, cmd_data_prepare),
    ("serve",): (ServeConfig, cmd_serve),
    ("export",): (ExportConfig, cmd_export),
}


def make_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="spectune", description="Fine-tune a transformer for your task, then serve it fast.")
    parser.add_argument("--version", action="version", version=f"spectune {__version__}")
    subs = parser.add_subparsers(dest="_command", metavar="COMMAND", parser_class=_Parser)
    groups: dict[str, argparse._SubParsersAction] = {}
    for path, (cls, _) in COMMANDS.items():
        where = subs
        for word in path[:-1]:
            if word not in groups:
                group = subs.add_parser(word, help=f"{word} commands")
                groups[word] = group.add_subparsers(dest=f"_{word}", metavar="COMMAND", parser_class=_Parser)
            where = groups[word]
        p = where.add_parser(path[-1], help=(cls.__doc__ or "").split(":")[-1].strip(),
                             description=(cls.__doc__ or "").strip())
        add_config_arguments(p, cls)
        p.set_defaults(_run=path)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = make_parser()
    try:
        ns = parser.parse_args(argv)
        if not hasattr(ns, "_run"):  # a group without its sub-command, or nothing at all
            parser.print_help(sys.stderr)
            return 2
        cls, run = COMMANDS[ns._run]
        _quiet_libraries()
        return run(config_from_args(cls, ns))
    except SpectuneError as e:
        return report(e)
    except KeyboardInterrupt:
        print("spectune: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `spectune ... | head`: the reader left; not an error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


def _quiet_libraries() -> None:
    """Library chatter (load bars, advisory warnings) would bury the one line a user wants."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    import huggingface_hub

    huggingface_hub.utils.disable_progress_bars()


if __name__ == "__main__":
    sys.exit(main())
