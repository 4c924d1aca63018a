"""The `spectune` command: output on success, one line and exit code 2 on a user's mistake."""

import json
import subprocess
import sys

import pytest

from spectune.cli import main


def run_cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "spectune.cli", *args], capture_output=True, text=True,
                          timeout=300, env=env)


def test_generate_streams_to_stdout(tiny_llama_dir, capsys):
    assert main(["generate", "--model", str(tiny_llama_dir), "--prompt", "The capital of France",
                 "--max-new-tokens", "6"]) == 0
    out, err = capsys.readouterr()
    assert out.endswith("\n") and "new tokens in" in err and "tokens/s" in err


def test_prepare_and_list(tiny_gguf, capsys):
    assert main(["models", "prepare", str(tiny_gguf), "--dtype", "bf16"]) == 0
    assert "causal-lm ready at" in capsys.readouterr().out
    assert main(["models", "list", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    names = [r["name"] for r in rows]
    assert "smollm2-135m" in names and "minilm-l6" in names
    mine = [r for r in rows if r["name"] == "tiny-llama.gguf"]
    assert mine and mine[0]["dtype"] == "bf16" and mine[0]["kind"] == "causal-lm" and mine[0]["params"] > 0
    assert main(["models", "list"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split()[:5] == ["model", "kind", "params", "dtype", "size"]


@pytest.mark.parametrize("args, expected", [
    (["models", "prepare", "./nowhere"], "no such file or folder: './nowhere'"),
    (["models", "prepare", "smollm3-135m"], "unknown model 'smollm3-135m'"),
    (["generate", "--prompt", "hi", "--max-new-tokens", "lots"], "max_new_tokens: got 'lots', expected an integer"),
    (["generate", "--prompt", "hi", "--dtype", "fp8"], "invalid choice: 'fp8'"),
    (["generate", "--prompt", "hi", "--temprature", "1"], "unrecognized arguments: --temprature"),
    (["generate"], "give exactly one of --prompt TEXT or --prompts FILE.jsonl"),
    (["models", "frobnicate"], "invalid choice: 'frobnicate'"),
])
def test_user_mistakes_are_one_line_exit_2(args, expected):
    r = run_cli(*args)
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("spectune: error: ") and expected in lines[0], r.stderr


def test_errors_name_the_file(tmp_path, tiny_bert_dir):
    cfg = tmp_path / "gen.yaml"
    cfg.write_text("prompt: hi\ntop_p: 3\n")
    r = run_cli("generate", "--config", str(cfg))
    assert r.returncode == 2 and f"{cfg}:2: top_p: got 3.0, expected between 0.0 and 1.0" in r.stderr
    r = run_cli("generate", "--model", str(tiny_bert_dir), "--prompt", "hi")
    assert r.returncode == 2 and "is an encoder model, but this needs a causal LM" in r.stderr
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"GGUF\x03\x00\x00\x00" + b"\x00" * 10)
    r = run_cli("models", "prepare", str(bad))
    assert r.returncode == 2 and f"spectune: error: {bad}: corrupt or truncated GGUF" in r.stderr


def test_help_and_version():
    r = run_cli("--version")
    assert r.returncode == 0 and r.stdout.startswith("spectune ")
    r = run_cli("generate", "--help")
    assert r.returncode == 0 and "--max-new-tokens" in r.stdout and "chat template" in r.stdout


def test_chat_streams_answers_with_figures_and_keeps_the_conversation(tiny_llama_dir):
    r = subprocess.run([sys.executable, "-m", "spectune.cli", "chat", "--model", str(tiny_llama_dir), "--draft",
                        "lookup", "--max-new-tokens", "6"], input="hello\n\nhow are you\n/reset\nagain\n",
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    figures = [x for x in r.stderr.splitlines() if x.startswith("[")]
    assert len(figures) == 3 and all("tokens/s" in x and "acceptance" in x for x in figures)
    assert "(conversation forgotten)" in r.stderr and r.stdout.count("\n") >= 3
    r = subprocess.run([sys.executable, "-m", "spectune.cli", "chat", "--model", str(tiny_llama_dir), "--top-p",
                        "0"], input="hi\n", capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "top_p" in r.stderr and "Traceback" not in r.stderr


def test_generate_compare_prints_plain_and_speculative(tiny_llama_dir, capsys):
    assert main(["generate", "--model", str(tiny_llama_dir), "--prompt", "hello hello hello", "--draft", "lookup",
                 "--compare", "--max-new-tokens", "12"]) == 0
    err = capsys.readouterr().err
    assert "[plain: " in err and "speculative (lookup)" in err and "same text: yes" in err
    assert main(["generate", "--prompt", "hi", "--compare"]) == 2
    assert "give --draft and --prompt" in capsys.readouterr().err


def test_generate_compiled_compares_the_same_text(tiny_llama_dir, capsys):
    plain = main(["generate", "--model", str(tiny_llama_dir), "--prompt", "hello hello hello", "--max-new-tokens",
                  "12"]), capsys.readouterr().out
    assert main(["generate", "--model", str(tiny_llama_dir), "--prompt", "hello hello hello", "--draft", "lookup",
                 "--compare", "--max-new-tokens", "12", "--compile"]) == 0
    out, err = capsys.readouterr()
    # A Llama model decodes with the lean forward's kernels, which beat a compiled forward: said, and skipped
    # (compiling itself is tested in test_compile.py).
    assert "--compile not needed" in err and "same text: yes" in err
    assert plain == (0, out)
