"""The training loop: one readable function on `accelerate`.

`accelerate launch` or `torchrun` runs it unchanged with DDP / FSDP / DeepSpeed; on one process it
is a plain loop. Order of one optimizer step: forward + loss under autocast, backward (accumulated
over `grad_accum` micro-batches), clip, optimizer step, scheduler step. Every `eval_every` steps (or
epoch) the dev set is scored: the best model is kept by `metric`, early stopping counts evaluations
without improvement, and a resumable checkpoint (model, optimizer, scheduler, RNG, position in the
data) is written. Shuffling is a function of (seed, epoch), so a resumed run replays exactly the
batches an uninterrupted run would have seen.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import shutil
import sys
import time
from pathlib import Path

import torch

from .atomic import swap_into, write_json_atomic
from .config import TrainConfig, build
from .errors import SpectuneError
from .run import (
    RUN_FILE,
    build_model,
    fingerprint,
    is_run,
    load_run,
    max_positions,
    read_run,
    save_model,
)
from .scratch import char_tokenizer, is_scratch
from .tuning import TuningOptions, apply_tuning, count_parameters

LOWER_IS_BETTER = ("loss", "perplexity")


def task_options(cfg: TrainConfig) -> dict:
    if cfg.task == "classify":
        return {"text_column": cfg.text_column, "label_column": cfg.label_column, "class_weights": cfg.class_weights,
                "ngram_features": cfg.ngram_features}
    if cfg.task == "ner":
        return {"crf": cfg.crf, "ngram_features": cfg.ngram_features}
    if cfg.task == "mlm":
        return {"text_column": cfg.text_column}
    if cfg.task == "draft":
        return {"target": cfg.model, "kind": cfg.draft_kind,
                "layers": cfg.draft_layers or (1 if cfg.draft_kind == "head" else 2),
                "vocab": cfg.draft_vocab, "new_tokens": cfg.draft_new_tokens}
    return {}


def make_optimizer(model, cfg: TrainConfig) -> torch.optim.Optimizer:
    # Weight decay on matrices only: biases and norm gains (1-D) are not shrunk towards zero.
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    params = [p for _, p in named]
    def is_ngrams(n):
        return n.startswith(("ngrams.", "crf.features."))

    ngrams = [p for n, p in named if is_ngrams(n)]
    crf = [p for n, p in named if n.startswith("crf.") and not is_ngrams(n)]
    rest = [p for n, p in named if not n.startswith(("crf.", "ngrams."))]
    groups = [{"params": [p for p in rest if p.ndim >= 2], "weight_decay": cfg.weight_decay},
              {"params": [p for p in rest if p.ndim < 2], "weight_decay": 0.0}]
    if crf:  # a few hundred transition scores that start at zero: they get their own, larger rate
        groups.append({"params": crf, "weight_decay": 0.0, "lr": cfg.crf_lr})
    if ngrams:  # sparse rows from zero, each seen by few batches: their own rate too
        groups.append({"params": ngrams, "weight_decay": 0.0, "lr": cfg.ngram_lr})
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=0.9)
    # The fused kernel updates in place; the default multi-tensor path allocates temporaries the
    # size of all trainable weights (+200 MB for MiniLM), and is no faster here.
    fused = all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in params)
    return torch.optim.AdamW(groups, lr=cfg.lr, fused=fused or None)


def train(cfg: TrainConfig) -> dict:
    """Fine-tune as `cfg` says; returns the run's spectune.json contents."""
    from accelerate import Accelerator
    from accelerate.utils import DataLoaderConfiguration, set_seed
    from transformers import get_scheduler

    from .loading import load_tokenizer, tokenizer_from_folder
    from .tasks import eval_features, make_task

    out = Path(cfg.out)
    ckpt = out / "checkpoint-last"
    if cfg.resume:
        if not (ckpt / "trainer_state.json").is_file():
            raise SpectuneError("nothing to resume: no checkpoint-last/ in this run folder", where=str(out))
        stored = read_run(out)["arguments"]
        cfg = build(TrainConfig, {**stored, "resume": True, "quiet": cfg.quiet})
    elif (out / RUN_FILE).exists():
        raise SpectuneError("already holds a run; pass --resume to continue it, or choose another --out",
                            where=str(out))

    # cpu=True on a machine without an accelerator: only then does accelerate take torchrun's
    # environment (WORLD_SIZE, LOCAL_RANK) as a multi-process CPU run over gloo.
    # accelerate keeps the first Accelerator's settings process-wide and refuses another precision; a
    # second run in one process (a recipe chain, the Python API, tests) may want one. The process
    # group (PartialState) is kept.
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state()
    accelerator = Accelerator(cpu=not torch.accelerator.is_available(), gradient_accumulation_steps=cfg.grad_accum,
                              mixed_precision="bf16" if cfg.bf16 else "no",
                              dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, data_seed=cfg.seed))
    main = accelerator.is_main_process
    from tqdm import tqdm

    say = (lambda msg: tqdm.write(msg, file=sys.stderr)) if main else (lambda msg: None)
    set_seed(cfg.seed)

    # Data first: a mistake in any file is reported before minutes of model loading.
    if is_scratch(cfg.model):  # a new encoder: its vocabulary is the training file's characters
        from .tasks.masked_lm import read_texts

        tok = char_tokenizer(read_texts(cfg.train, cfg.text_column))
    elif is_run(cfg.model):
        tok = tokenizer_from_folder(Path(cfg.model) / "model")
    else:
        tok = load_tokenizer(cfg.model)
    limit = max_positions(cfg.model)
    if limit and cfg.max_length > limit:
        say(f"note: --max-length {cfg.max_length} is beyond what {cfg.model} can take; using {limit}")
        cfg = dataclasses.replace(cfg, max_length=limit)
    task = make_task(cfg.task, tok, max_length=cfg.max_length, **task_options(cfg))
    train_rows = _first(task.read(cfg.train, "train"), cfg.max_train_examples)
    dev_rows = _first(task.read(cfg.dev, "dev"), cfg.max_eval_examples) if cfg.dev else None
    test_rows = _first(task.read(cfg.test, "test"), cfg.max_eval_examples) if cfg.test else None
    train_feats = task.encode(train_rows)
    n_train = len(train_rows)
    del train_rows  # the encoded features are all training needs (raw NER rows: ~100 MB on PD1998)
    dev_feats = eval_features(task, dev_rows) if dev_rows else None
    if getattr(task, "truncated", 0):
        say(f"note: {task.truncated} training examples were longer than --max-length {cfg.max_length} and cut")

    model = build_model(task, cfg.model, task.labels, cfg.dropout)
    tuning = TuningOptions(cfg.peft, cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout, cfg.lora_targets,
                           cfg.prompt_tokens, cfg.freeze_top_k)
    model = apply_tuning(model, tuning, cfg.task)
    if hasattr(task, "prepare_model"):  # layers the task adds on top (NER's CRF), trained whatever --peft says
        model = task.prepare_model(model)
    trainable, total = count_parameters(model)
    say(f"{cfg.task} on {cfg.model} with {cfg.peft}: {trainable:,} trainable of {total:,} parameters "
        f"({100 * trainable / total:.2f}%); {n_train} training examples, {len(train_feats)} after encoding")

    metric = cfg.metric or task.metric
    if metric not in task.metrics:
        raise SpectuneError(f"got {metric!r}, but a {cfg.task} run reports {', '.join(task.metrics)}", where="metric")
    lower = metric in LOWER_IS_BETTER
    optimizer = make_optimizer(model, cfg)
    # The loader gets its own generator: creating an iterator draws a seed from it, and drawing from
    # the global RNG instead would shift dropout masks after a resume.
    order = {"shuffle": True}
    if cfg.group_by_length:
        from .length_groups import LengthGroupedSampler

        order = {"sampler": LengthGroupedSampler([len(f["input_ids"]) for f in train_feats], cfg.batch_size, cfg.seed)}
    loader = torch.utils.data.DataLoader(train_feats, batch_size=cfg.batch_size, collate_fn=task.collate,
                                         generator=torch.Generator().manual_seed(cfg.seed), **order)
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)

    def trainable_only(models, weights, _dir) -> None:
        # Frozen weights never change: a LoRA checkpoint holds the adapter, not 540 MB of base
        # model (whose serialisation alone would double the peak memory). Loaded with strict=False.
        for m, w in zip(models, weights, strict=True):
            keep = {n for n, p in m.named_parameters() if p.requires_grad}
            for k in [k for k in w if k not in keep]:
                del w[k]

    accelerator.register_save_state_pre_hook(trainable_only)
    steps_per_epoch = math.ceil(len(loader) / cfg.grad_accum)
    total_steps = steps_per_epoch * cfg.epochs
    if cfg.max_steps:
        total_steps = min(total_steps, cfg.max_steps)
    # Not prepared: accelerate would step it once per process. We step it once per optimizer step.
    scheduler = get_scheduler("constant_with_warmup" if cfg.schedule == "constant" else cfg.schedule, optimizer,
                              num_warmup_steps=int(cfg.warmup_ratio * total_steps), num_training_steps=total_steps)

    info = {"task": cfg.task, "base_model": cfg.model, "peft": cfg.peft, "labels": task.labels,
            "scheme": getattr(task, "scheme", None), "max_length": cfg.max_length, "task_options": task_options(cfg),
            "metric": metric, "trainable_params": trainable, "total_params": total,
            "arguments": dataclasses.asdict(cfg), "versions": _versions(), "status": "running"}
    if cfg.task == "draft":  # a draft serves one target: `--draft RUN` checks it is that one
        info["target_fingerprint"] = fingerprint(cfg.model)
    state = {"epoch": 0, "batches_in_epoch": 0, "step": 0, "best": None, "best_step": None, "bad_evals": 0,
             "history": [], "loss_sum": 0.0, "loss_count": 0, "tokens": 0, "seconds": 0.0}
    if cfg.resume:
        accelerator.load_state(str(ckpt), strict=False)
        state = json.loads((ckpt / "trainer_state.json").read_text())
        scheduler.load_state_dict(state.pop("scheduler"))
        info = {**read_run(out), "status": "running"}
        say(f"resuming from step {state['step']} (epoch {state['epoch'] + 1}, batch {state['batches_in_epoch']})")
    elif main:
        out.mkdir(parents=True, exist_ok=True)
        write_json_atomic(out / RUN_FILE, info)

    def evaluate_now() -> bool:
        """Score dev, keep the best model, write logs; True when early stopping says stop."""
        unwrapped = accelerator.unwrap_model(model)
        row = {"step": state["step"], "epoch": round(state["step"] / steps_per_epoch, 3),
               "lr": scheduler.get_last_lr()[0],
               "train_loss": state["loss_sum"] / max(state["loss_count"], 1)}
        state["loss_sum"], state["loss_count"] = 0.0, 0
        if dev_feats is not None:
            unwrapped.eval()
            with accelerator.autocast():  # bf16 runs evaluate in bf16 too: 2-3x faster on this CPU
                metrics = task.evaluate(unwrapped, dev_feats, dev_rows)
            unwrapped.train()
            row.update({f"dev_{k}": v for k, v in _scalars(metrics).items()})
            value = metrics[metric]
            better = state["best"] is None or (value < state["best"] if lower else value > state["best"])
            if better:
                state["best"], state["best_step"], state["bad_evals"] = value, state["step"], 0
                if main:
                    save_model(unwrapped, tok, out / "model")
            else:
                state["bad_evals"] += 1
            say(f"step {state['step']}: dev {metric} {value:.4f} (best {state['best']:.4f} at step "
                f"{state['best_step']}); train loss {row['train_loss']:.4f}")
        state["history"].append(row)
        if main:
            _write_logs(out, state["history"], metric)
        return bool(cfg.patience and state["bad_evals"] >= cfg.patience)

    def checkpoint() -> None:
        # Every process saves (each has its own RNG state); the main one swaps the folder in.
        tmp = out / ".checkpoint-last.tmp"
        if main:
            shutil.rmtree(tmp, ignore_errors=True)
        accelerator.wait_for_everyone()
        accelerator.save_state(str(tmp))
        if main:
            # The scheduler's state goes in the JSON: accelerate would pickle it, and unpickle it on resume.
            write_json_atomic(tmp / "trainer_state.json", {**state, "scheduler": scheduler.state_dict()})
            swap_into(tmp, ckpt)
        accelerator.wait_for_everyone()

    bar = tqdm(total=total_steps, initial=state["step"], disable=cfg.quiet or not main, file=sys.stderr,
               unit="step", dynamic_ncols=True, mininterval=0.5 if sys.stderr.isatty() else 15)
    model.train()
    stop = state["step"] >= total_steps
    t0 = time.perf_counter() - state["seconds"]
    while not stop and state["epoch"] < cfg.epochs:
        loader.set_epoch(state["epoch"])
        skip = state["batches_in_epoch"]
        for batch in accelerator.skip_first_batches(loader, skip) if skip else loader:
            with accelerator.accumulate(model):
                with accelerator.autocast():
                    loss = task.loss(model, batch)
                accelerator.backward(loss)
                if accelerator.sync_gradients and cfg.max_grad_norm:
                    accelerator.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
                optimizer.step()
                optimizer.zero_grad()
            state["batches_in_epoch"] += 1
            state["loss_sum"] += loss.item()
            # Dropped now, not when the next forward rebinds it: holding the finished graph through
            # the next step cost about 500 MB of peak memory with SmolLM2 + LoRA.
            del loss
            state["loss_count"] += 1
            state["tokens"] += int(batch["attention_mask"].sum()) * accelerator.num_processes
            if not accelerator.sync_gradients:
                continue
            scheduler.step()
            state["step"] += 1
            state["seconds"] = time.perf_counter() - t0
            state["peak_rss_mib"] = _peak_rss_mib()
            bar.update(1)
            bar.set_postfix(loss=f"{state['loss_sum'] / max(state['loss_count'], 1):.4f}",
                            tok_s=f"{state['tokens'] / state['seconds']:.0f}")
            end_of_epoch = state["batches_in_epoch"] == len(loader)
            if end_of_epoch:
                state["epoch"] += 1
                state["batches_in_epoch"] = 0
            at_eval = (state["step"] % cfg.eval_every == 0) if cfg.eval_every else end_of_epoch
            stop = state["step"] >= total_steps
            if at_eval or stop:  # the last weights are always scored
                stop = evaluate_now() or stop
                checkpoint()
            elif cfg.save_every and state["step"] % cfg.save_every == 0:
                checkpoint()
            if stop:
                break
    bar.close()

    if main:
        if dev_feats is None:  # no dev set: the last weights are the run's model
            save_model(accelerator.unwrap_model(model), tok, out / "model")
        info.update(status="done", best={"metric": metric, "value": state["best"], "step": state["best_step"]},
                    steps=state["step"], train_seconds=round(state["seconds"], 1),
                    train_tokens_per_second=round(state["tokens"] / max(state["seconds"], 1e-9), 1),
                    train_peak_rss_mib=state.get("peak_rss_mib"))
        write_json_atomic(out / RUN_FILE, info)
        if test_rows:
            from .evaluate import format_report

            report = evaluate_run(out, test_rows=test_rows, name="test")
            print(format_report(report))
            info["test"] = {k: v for k, v in _scalars(report).items()}
            write_json_atomic(out / RUN_FILE, info)
    accelerator.wait_for_everyone()
    return info


def evaluate_run(run_dir: Path, data: str | None = None, test_rows=None, name: str = "test",
                 json_out: str | None = None) -> dict:
    """Score a saved run on labelled data; writes NAME-report.{json,txt} (and confusion.png)."""
    from .evaluate import format_report, plot_confusion
    from .tasks import eval_features

    _, task, model = load_run(run_dir)
    rows = test_rows if test_rows is not None else task.read(data, "test")
    report = task.evaluate(model, eval_features(task, rows), rows)
    run_dir = Path(run_dir)
    write_json_atomic(run_dir / f"{name}-report.json", report)
    (run_dir / f"{name}-report.txt").write_text(format_report(report) + "\n")
    if json_out:
        write_json_atomic(Path(json_out), report)
    if report.get("task") == "classify":
        plot_confusion(report, run_dir / ("confusion.png" if name == "test" else f"{name}-confusion.png"))
    return report


def _peak_rss_mib() -> float:
    """This process's peak resident memory so far (Linux reports KiB)."""
    import resource

    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def _first(rows: list, n: int) -> list:
    return rows[:n] if n else rows


def _scalars(metrics: dict) -> dict:
    out = {k: v for k, v in metrics.items() if isinstance(v, int | float) and not isinstance(v, bool)}
    if "entity" in metrics:
        out.update({f"entity_{k}": metrics["entity"][k] for k in ("precision", "recall", "f1")})
    return out


def _write_logs(out: Path, history: list[dict], metric: str) -> None:
    keys = list(dict.fromkeys(k for row in history for k in row))
    tmp = out / ".metrics.csv.tmp"
    with open(tmp, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=keys)
        w.writeheader()
        w.writerows(history)
    tmp.replace(out / "metrics.csv")
    _plot_curves(out / "curves.png", history, metric)


def _plot_curves(path: Path, history: list[dict], metric: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [r["step"] for r in history]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    axes[0].plot(steps, [r["train_loss"] for r in history], marker="o", label="train")
    if any("dev_loss" in r for r in history):
        axes[0].plot(steps, [r.get("dev_loss") for r in history], marker="o", label="dev")
    axes[0].set(title="loss", xlabel="step")
    axes[0].legend()
    key = f"dev_{metric}"
    if any(key in r for r in history):
        axes[1].plot(steps, [r.get(key) for r in history], marker="o", color="tab:green")
    axes[1].set(title=f"dev {metric}", xlabel="step")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _versions() -> dict:
    import accelerate
    import peft
    import transformers

    from . import __version__

    return {"spectune": __version__, "torch": torch.__version__, "transformers": transformers.__version__,
            "peft": peft.__version__, "accelerate": accelerate.__version__}
