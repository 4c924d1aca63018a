"""Quality on real data, baselines and our recipes in the same run.

Tasks: PD1998 NER (People's Daily 1998, character-level PER/LOC/ORG, contiguous split) and
Chinese review sentiment (deduplicated, hash split). Each method trains on train, is selected on
dev, and is scored once on test, in its own process (peak memory is that process's maximum
resident set). Baselines: a CRF with character n-gram window features (NER) and TF-IDF char
1-3-grams + logistic regression (sentiment). Our recipes are `spectune train` YAML configs given
with --recipe TASK=CONFIG[+CONFIG...]: the configs of a chain run in order (pre-training, then
fine-tuning), their train/dev/test paths replaced by the prepared files (a pre-training step gets
no test file) and a `model` naming an earlier step's `out` (or its `out/model`) pointed at that
step's run; minutes and training seconds are the whole chain's, peak memory its largest step's.

Usage: python bench/quality.py [--tasks ner,sentiment]
       [--recipe ner=configs/pd1998-mlm.yaml+configs/pd1998-ner.yaml] [--json bench/quality.json]
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

DATA = {"ner": ("pd1998-ner", "conll"), "sentiment": ("chn-sentiment", "csv")}


def worker(task: str, method: str, data: str, out: str) -> dict:
    from spectune.data.conll import read_tagged
    from spectune.data.tabular import read_labelled

    t0 = time.perf_counter()
    files = {s: str(Path(data) / f"{s}.{DATA[task][1]}") for s in ("train", "dev", "test")}
    if method == "baseline":
        from spectune import baselines

        if task == "ner":
            sents = {s: read_tagged(f)[0] for s, f in files.items()}
            r = baselines.crf_ner(sents["train"], sents["dev"], sents["test"])
        else:
            rows = {s: read_labelled(f) for s, f in files.items()}
            r = baselines.tfidf_classifier(rows["train"], rows["dev"], rows["test"])
        test = r["test"]
        dev = r["dev"]["entity"]["f1"] if task == "ner" else r["dev"]["accuracy"]
    else:
        from spectune.config import TrainConfig, build, load_yaml
        from spectune.train import train

        outs, seconds = {}, 0.0  # a step's configured out -> where it really ran
        for i, step in enumerate(method.split("+")):
            values, _ = load_yaml(step)
            run = f"{out}-{i}"
            model = str(values.get("model", "")).removesuffix("/model")
            if model in outs:
                values["model"] = str(Path(outs[model]) / "model")
            outs[str(values.get("out", ""))] = run
            paths = files if values.get("task") != "mlm" else {**files, "test": None}
            info = train(build(TrainConfig, {**values, **paths, "out": run, "quiet": True}))
            seconds += info["train_seconds"]
        test = json.loads((Path(run) / "test-report.json").read_text())
        r = {"train_seconds": round(seconds, 1)}
        dev = info["best"]["value"]  # the last step's dev metric at its best checkpoint
    return {"task": task, "method": "baseline" if method == "baseline" else "+".join(Path(m).stem for m in
                                                                                       method.split("+")),
            "minutes": round((time.perf_counter() - t0) / 60, 2), "train_seconds": r["train_seconds"],
            "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "dev": round(dev, 4), "test": test}


def summary(r: dict) -> str:
    t = r["test"]
    if r["task"] == "ner":
        e = t["entity"]
        per = ", ".join(f"{k} {v['f1']:.3f}" for k, v in sorted(e["per_type"].items()))
        return f"entity P/R/F1 {e['precision']:.4f}/{e['recall']:.4f}/{e['f1']:.4f} ({per})"
    return f"accuracy {t['accuracy']:.4f}, macro-F1 {t['macro_f1']:.4f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tasks", default="ner,sentiment")
    ap.add_argument("--recipe", action="append", default=[], metavar="TASK=CONFIG")
    ap.add_argument("--json", default="bench/quality.json")
    ap.add_argument("--worker", nargs=4, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:
        print(json.dumps(worker(*a.worker)))
        return
    recipes = {}
    for item in a.recipe:
        task, _, cfg = item.partition("=")
        recipes.setdefault(task, []).append(cfg)
    from spectune.data.corpora import prepare

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for task in a.tasks.split(","):
            data = Path(tmp) / task
            prepare(DATA[task][0], data)
            for method in ["baseline", *recipes.get(task, [])]:
                r = subprocess.run([sys.executable, __file__, "--worker", task, method, str(data),
                                    str(Path(tmp) / f"run-{task}-{len(rows)}")],
                                   capture_output=True, text=True,
                                   env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
                if r.returncode:
                    sys.exit(f"{task}/{method} failed:\n{r.stderr[-3000:]}")
                rows.append(json.loads(r.stdout.strip().splitlines()[-1]))
                print(f"  {task:9} {rows[-1]['method']:12} {summary(rows[-1])}", file=sys.stderr, flush=True)
    lines = ["| task | method | dev (selection) | test result | minutes | peak RSS (MiB) |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {r['task']} | {r['method']} | {r['dev']:.4f} | {summary(r)} | {r['minutes']} | "
              f"{r['peak_rss_mib']:.0f} |" for r in rows]
    print("\n".join(lines))
    Path(a.json).parent.mkdir(parents=True, exist_ok=True)
    Path(a.json).write_text(json.dumps({"rows": rows, "date": time.strftime("%Y-%m-%d")}, indent=1))


if __name__ == "__main__":
    main()
