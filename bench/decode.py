"""Decoding speed against transformers' generate, in the same run, on the same prompts.

Rows: transformers `generate` (greedy, the reference), transformers with its prompt look-up
(`prompt_lookup_num_tokens=10`), our engine plain, with prompt look-up, and with the target's first
N layers as draft. For each: tokens/s, the ratio to transformers, tau (tokens per target pass),
acceptance, and whether the text equals the reference token for token (greedy must be exact).
Prompts cover kinds where look-up should help (quote, summarise, edit code) and where it should
not (open chat). Then the same prompts as one batch of 4, plain and with look-up, against batch 1.
Usage: python bench/decode.py [--max-new-tokens 64] [--json bench/decode.json]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch

PASSAGE = ("The Eiffel Tower was built between 1887 and 1889 as the entrance arch to the 1889 World's Fair. "
           "It is 330 metres tall and was the tallest man-made structure in the world for 41 years, until the "
           "Chrysler Building in New York was finished in 1930. It is made of wrought iron and weighs about "
           "7,300 tonnes.")
CODE = ("def mean(values):\n    total = 0\n    for v in values:\n        total = total + v\n"
        "    return total / len(values)\n")
PROMPTS = {
    "quote": f"Repeat the following paragraph word for word.\n\n{PASSAGE}",
    "summarise": f"{PASSAGE}\n\nSummarise the paragraph above in two sentences, reusing its words.",
    "code-edit": f"{CODE}\nRename the variable `total` to `acc` in this function and print the whole function.",
    "open-chat": "What are three good habits for staying healthy? Answer briefly.",
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--layers", type=int, default=8, help="N for the layers:N draft")
    ap.add_argument("--json", default="bench/decode.json")
    a = ap.parse_args()

    from spectune.decode.drafters import make_drafter
    from spectune.decode.engine import Metrics, decode
    from spectune.generate import prompt_ids
    from spectune.loading import load_model, load_tokenizer

    torch.set_num_threads(os.cpu_count() or 2)
    tok, model = load_tokenizer(a.model), load_model(a.model)
    eos = {tok.eos_token_id}
    rows, outs = [], {}
    for kind, text in PROMPTS.items():
        ids = prompt_ids(tok, text)
        n_prompt = ids.shape[1]

        def hf(ids=ids, n_prompt=n_prompt, **extra):
            t0 = time.perf_counter()
            out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=a.max_new_tokens,
                                 do_sample=False, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                                 **extra)
            return out[0, n_prompt:].tolist(), time.perf_counter() - t0, None

        def ours(draft, ids=ids):
            m = Metrics()
            drafter = make_drafter(draft, model)
            t0 = time.perf_counter()
            out = [t for chunk in decode(model, ids[0].tolist(), max_new_tokens=a.max_new_tokens, eos=eos,
                                         drafter=drafter, metrics=m) for t in chunk]
            return out, time.perf_counter() - t0, m

        hf()  # warm-up: first calls pay for allocation and kernel selection
        ref = None
        for name, fn in [("transformers", hf), ("transformers+lookup", lambda: hf(prompt_lookup_num_tokens=10)),
                         ("ours", lambda: ours(None)), ("ours+lookup", lambda: ours("lookup")),
                         (f"ours+layers:{a.layers}", lambda: ours(f"layers:{a.layers}"))]:
            with torch.no_grad():
                out, seconds, m = fn()
            ref = out if ref is None else ref
            outs[kind, name] = out
            rows.append({"prompt": kind, "decoder": name, "new_tokens": len(out), "seconds": round(seconds, 3),
                         "tokens_per_s": round(len(out) / seconds, 2), "exact": out == ref,
                         "tau": round(m.tau, 3) if m else None,
                         "acceptance": round(m.acceptance, 3) if m and m.drafted else None})
            print(f"  {kind:10} {name:22} {rows[-1]['tokens_per_s']:7.2f} tok/s  exact={rows[-1]['exact']}",
                  flush=True)
    for r in rows:
        base = next(x for x in rows if x["prompt"] == r["prompt"] and x["decoder"] == "transformers")
        r["vs_transformers"] = round(r["tokens_per_s"] / base["tokens_per_s"], 3)
    lines = ["| prompt | decoder | new tokens | tokens/s | vs transformers | tau | acceptance | same text |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['prompt']} | {r['decoder']} | {r['new_tokens']} | {r['tokens_per_s']:.2f} | "
                     f"{r['vs_transformers']:.2f}x | {'-' if r['tau'] is None else r['tau']} | "
                     f"{'-' if r['acceptance'] is None else r['acceptance']} | "
                     f"{'yes' if r['exact'] else 'NO'} |")
    print("\n".join(lines))
    batch_rows = batches(model, tok, rows, outs, a.max_new_tokens, eos)
    Path(a.json).parent.mkdir(parents=True, exist_ok=True)
    Path(a.json).write_text(json.dumps({"model": a.model, "max_new_tokens": a.max_new_tokens, "dtype": "fp32",
                                        "rows": rows, "batch": batch_rows, "date": time.strftime("%Y-%m-%d")},
                                       indent=1))


def batches(model, tok, rows, outs, max_new_tokens, eos) -> list[dict]:
    """All prompts at once (batch 4) against the same prompts one by one (batch 1, from the rows
    above): throughput, and whether each row's text equals its batch-1 text."""
    from spectune.decode.drafters import make_drafter
    from spectune.decode.engine import Request, decode_batch
    from spectune.generate import prompt_ids

    kinds = list(PROMPTS)
    prompts = [prompt_ids(tok, PROMPTS[k])[0].tolist() for k in kinds]
    result = []
    for draft, solo_name in ((None, "ours"), ("lookup", "ours+lookup")):
        solo = [r for r in rows if r["decoder"] == solo_name]
        solo_rate = sum(r["new_tokens"] for r in solo) / sum(r["seconds"] for r in solo)
        requests = [Request(p, max_new_tokens=max_new_tokens, eos=eos) for p in prompts]
        got = {id(r): [] for r in requests}
        t0 = time.perf_counter()
        for events in decode_batch(model, requests, drafter=make_drafter(draft, model), pad_id=0):
            for r, tokens in events:
                got[id(r)] += tokens
        seconds = time.perf_counter() - t0
        n = sum(len(v) for v in got.values())
        exact = all(got[id(r)] == outs[k, solo_name] for r, k in zip(requests, kinds, strict=True))
        result.append({"decoder": solo_name, "batch": len(prompts), "tokens_per_s": round(n / seconds, 2),
                       "batch1_tokens_per_s": round(solo_rate, 2), "vs_batch1": round(n / seconds / solo_rate, 3),
                       "exact": exact})
    print("| decoder | batch | tokens/s | batch 1 tokens/s | vs batch 1 | same text as batch 1 |")
    print("|---|---|---|---|---|---|")
    for r in result:
        print(f"| {r['decoder']} | {r['batch']} | {r['tokens_per_s']:.2f} | {r['batch1_tokens_per_s']:.2f} | "
              f"{r['vs_batch1']:.2f}x | {'yes' if r['exact'] else 'NO'} |")
    return result


if __name__ == "__main__":
    main()
