"""llama.cpp as the CPU reference, in one run with transformers' generate and our fastest settings.

The issue's moonshot: our fastest exact setting against llama.cpp's plain decoding on the same
prompts. llama.cpp runs the embedded model's own Q4_1 GGUF (SmolLM2-135M-Instruct, the file our
`smollm2-135m` alias dequantizes), greedy (top-k 1), 2 threads, its cache reset before each
prompt; our rows run the same weights dequantized. Rows, per kind, on the same prompts as
bench/decode.py: transformers fp32 `generate` (the reference), llama.cpp, and our engine (lean
forward, decode/lean_llama.py) plain and with prompt look-up at fp32, bf16 and int8; `exact` says
whether every look-up output equals the same setting's plain output token for token. Tokens/s
include each prompt's prefill, as in bench/decode.py.

llama-cpp-python is not a project dependency: it compiles llama.cpp from source (about five
minutes here) in the bench's environment. Its default native build crashed on this machine's
AMX instructions at the first evaluation (segmentation fault); without them it runs:
    CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_AVX512=ON" \
        pip install llama-cpp-python==0.3.36
Usage: python bench/llamacpp.py [--per-kind 2] [--max-new-tokens 128] [--json bench/llamacpp.json]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch
from decode import load, pick_prompts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--per-kind", type=int, default=2)
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", default="bench/llamacpp.json")
    a = ap.parse_args()
    try:
        import llama_cpp
    except ImportError:
        raise SystemExit("llama-cpp-python is not installed: see this script's docstring for the install "
                         "command (it compiles llama.cpp, about five minutes)") from None
    from spectune.decode import lean_llama
    from spectune.decode.drafters import LookupDrafter
    from spectune.decode.engine import decode
    from spectune.generate import prompt_ids
    from spectune.loading import load_tokenizer
    from spectune.models import ALIASES, alias_source

    torch.set_num_threads(a.threads)
    tok = load_tokenizer("smollm2-135m")
    eos = tok.eos_token_id
    prompts = pick_prompts(a.per_kind)

    gguf = alias_source(ALIASES["smollm2-135m"])
    llm = llama_cpp.Llama(model_path=str(gguf), n_threads=a.threads, n_ctx=2048, verbose=False)
    hf = load("smollm2-135m", "fp32")
    ours_models = {}
    for dtype in ("fp32", "bf16", "int8"):
        ours_models[dtype] = load("smollm2-135m", dtype)
        assert lean_llama.install(ours_models[dtype])

    def llama(ids: list[int]):
        llm.reset()
        out = []
        t0 = time.perf_counter()
        for t in llm.generate(ids, top_k=1, top_p=1.0, temp=0.0, repeat_penalty=1.0, reset=True):
            out.append(t)
            if t == eos or len(out) >= a.max_new_tokens:
                break
        return out, time.perf_counter() - t0

    def transformers(ids: list[int]):
        t0 = time.perf_counter()
        x = torch.tensor([ids])
        out = hf.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=a.max_new_tokens, do_sample=False,
                          eos_token_id=eos, pad_token_id=tok.pad_token_id)
        return out[0, len(ids):].tolist(), time.perf_counter() - t0

    def ours(dtype: str, lookup: bool):
        def run(ids: list[int]):
            t0 = time.perf_counter()
            out = [t for c in decode(ours_models[dtype], ids, max_new_tokens=a.max_new_tokens, eos={eos},
                                     drafter=LookupDrafter() if lookup else None) for t in c]
            return out, time.perf_counter() - t0
        return run

    decoders = {"transformers fp32": transformers, "llama.cpp Q4_1": llama}
    for dtype in ("fp32", "bf16", "int8"):
        decoders[f"ours {dtype}"] = ours(dtype, False)
        decoders[f"ours {dtype}+lookup"] = ours(dtype, True)
    rows, outs = [], {}
    with torch.no_grad():
        for fn in decoders.values():  # warm-up: first calls allocate
            fn(prompt_ids(tok, prompts[0]["messages"])[0].tolist()[:16])
        for p in prompts:
            ids = prompt_ids(tok, p["messages"])[0].tolist()
            line = []
            for name, fn in decoders.items():
                out, seconds = fn(ids)
                outs[p["id"], name] = out
                plain = outs.get((p["id"], name.removesuffix("+lookup")))
                rows.append({"kind": p["kind"], "id": p["id"], "decoder": name, "new_tokens": len(out),
                             "seconds": round(seconds, 4), "exact": out == plain if name.startswith("ours") else None})
                line.append(f"{name} {len(out) / seconds:.1f}")
            print(f"  {p['id']:8} " + "  ".join(line), flush=True)

    kinds = list(dict.fromkeys(p["kind"] for p in prompts))
    rate = {}
    for kind in kinds + ["all"]:
        for name in decoders:
            rs = [r for r in rows if r["decoder"] == name and (kind == "all" or r["kind"] == kind)]
            rate[kind, name] = sum(r["new_tokens"] for r in rs) / sum(r["seconds"] for r in rs)
    print(f"\nSmolLM2-135M-Instruct, greedy, batch 1, at most {a.max_new_tokens} new tokens, {a.per_kind} prompts "
          f"per kind, {a.threads} threads, {os.cpu_count()} CPU cores")
    print("| kind | " + " | ".join(decoders) + " |\n|---|" + "---|" * len(decoders))
    for kind in kinds + ["all"]:
        cells = [f"{rate[kind, n]:.1f} ({rate[kind, n] / rate[kind, 'transformers fp32']:.2f}x; "
                 f"{rate[kind, n] / rate[kind, 'llama.cpp Q4_1']:.2f}x llama.cpp)" for n in decoders]
        print(f"| {kind} | " + " | ".join(cells) + " |")
    exact = {n: all(r["exact"] for r in rows if r["decoder"] == n) for n in decoders if n.endswith("+lookup")}
    print("look-up output equal to the same setting's plain output on every prompt: "
          + ", ".join(f"{n}: {'yes' if e else 'NO'}" for n, e in exact.items()))
    summary = [{"kind": k, "decoder": n, "tokens_per_s": rate[k, n],
                "vs_transformers_fp32": rate[k, n] / rate[k, "transformers fp32"],
                "vs_llama_cpp": rate[k, n] / rate[k, "llama.cpp Q4_1"]} for k in kinds + ["all"] for n in decoders]
    Path(a.json).write_text(json.dumps({"llama_cpp_python": llama_cpp.__version__, "gguf": gguf.name,
                                        "threads": a.threads, "max_new_tokens": a.max_new_tokens,
                                        "per_kind": a.per_kind, "exact": exact, "summary": summary, "rows": rows,
                                        "date": time.strftime("%Y-%m-%d")},
                                       indent=1))
    print(f"written to {a.json}")


if __name__ == "__main__":
    main()
