"""Two processes on this CPU (torchrun, gloo) train to the same place as one process with the
same global batch. `accelerate launch --cpu --num_processes 2` starts only one process on these
machines; torchrun starts two and Accelerator picks them up from the environment."""

import json
import os
import shutil
import subprocess
import sys

import pytest
import tiny


@pytest.mark.skipif(shutil.which("torchrun", path=os.path.dirname(sys.executable)) is None, reason="no torchrun")
def test_two_processes_match_one(tmp_path, tiny_bert_dir):
    data = tiny.write_ner(tmp_path)
    common = ["train", "--task", "ner", "--model", str(tiny_bert_dir), "--train", str(data["train"]),
              "--dev", str(data["dev"]), "--epochs", "2", "--lr", "1e-3", "--dropout", "0", "--quiet"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    one = subprocess.run([sys.executable, "-m", "spectune.cli", *common, "--batch-size", "8",
                          "--out", str(tmp_path / "one")], capture_output=True, text=True, env=env, timeout=600)
    assert one.returncode == 0, one.stderr
    torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
    two = subprocess.run([torchrun, "--nproc_per_node", "2", "--master_port", "29517", "-m", "spectune.cli", *common,
                          "--batch-size", "4", "--out", str(tmp_path / "two")],
                         capture_output=True, text=True, env=env, timeout=600)
    assert two.returncode == 0, two.stderr[-3000:]
    a = json.loads((tmp_path / "one/spectune.json").read_text())
    b = json.loads((tmp_path / "two/spectune.json").read_text())
    assert a["steps"] == b["steps"] == 24  # 96 examples, global batch 8, 2 epochs
    rows = {}
    for name in ("one", "two"):
        import csv

        rows[name] = list(csv.DictReader(open(tmp_path / name / "metrics.csv")))
    dev_one, dev_two = float(rows["one"][-1]["dev_loss"]), float(rows["two"][-1]["dev_loss"])
    first = float(rows["one"][0]["dev_loss"])
    assert abs(dev_one - dev_two) < 0.02 * first, (dev_one, dev_two)
