"""Decoding speed against transformers' generate, in one run, on the same prompts, greedy, batch 1.

Prompt set: bench/prompts.jsonl (bench/make_prompts.py), 8 prompts in each of seven kinds: chat
(multi-turn), translation, math (open-ended), summarization, passage QA, retrieval-augmented answer,
code editing (grounded in their input). Per dtype (fp32, bf16, and int8 = our --quantize int8)
and prompt, rows: transformers `generate` (the reference), transformers with prompt look-up
(`prompt_lookup_num_tokens=10`), our engine plain, with prompt look-up (with its tree drafts, and
as chains alone: `lookup-chain`), and with the target's
first N layers as draft, and each --draft-run (a distilled draft; a draft head also untrained, `@init`,
for before/after); with --compile also our engine on a compiled copy of the model
(`--compile`), plain and with look-up. Our rows run on a second copy of the model with our decoding
forward (lean_llama.py, Llama-family models), transformers' rows on the model as loaded. Reported
per kind: tokens/s, ratios, tau (tokens per target pass),
acceptance, and whether every output equals the reference token for token. Then batch 4 against
batch 1, and each plain decoder as a fraction of the weight-read bound (bytes of weights per token
over the memory bandwidth measured in the same run).
Usage: python bench/decode.py [--per-kind 8] [--dtypes fp32,bf16,int8] [--max-new-tokens 128] [--compile]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections import defaultdict
from pathlib import Path

import torch

GROUNDED = ("summarization", "passage-qa", "retrieval", "code-edit")


def bandwidth_gbs() -> float:
    """Read bandwidth: summing a 1 GiB fp32 tensor that no cache holds (best of 5)."""
    x = torch.ones(2**28)
    best = 0.0
    for _ in range(5):
        t0 = time.perf_counter()
        x.sum()
        best = max(best, x.numel() * 4 / (time.perf_counter() - t0) / 1e9)
    return best


def load(spec: str, dtype: str):
    from spectune.loading import load_model
    from spectune.quantize import quantize_int8

    if dtype == "int8":
        return quantize_int8(load_model(spec))
    return load_model(spec, dtype=dtype)


def run_dtype(a, tok, dtype: str, prompts: list[dict]) -> tuple[list[dict], dict]:
    from spectune.decode import lean_llama
    from spectune.decode.drafters import make_drafter
    from spectune.decode.engine import Metrics, decode
    from spectune.generate import prompt_ids

    model = load(a.model, dtype)  # transformers' rows: its own forward
    ours_model = load(a.model, dtype)  # our rows: our decoding forward where the model has one
    lean = lean_llama.install(ours_model)
    eos = {tok.eos_token_id}
    rows, outs = [], {}
    from spectune.decode.drafters import LookupDrafter

    drafters = {"lookup": make_drafter("lookup", ours_model),
                "lookup-chain": LookupDrafter(branches=0),  # look-up without tree drafts (lookup_tree.py)
                f"layers:{a.layers}": make_drafter(f"layers:{a.layers}", ours_model)}
    for name, run in draft_runs(a.draft_run):  # drafts distilled for this target (`spectune distill`)
        drafters[name] = make_drafter(run, ours_model, a.model)
        if hasattr(drafters[name], "head"):  # a head: also the same head untrained (before distillation)
            from spectune.draft_head import DraftHead, head_drafter

            source = load(a.model, "fp32") if dtype == "int8" else model  # an int8 model's layers hold no weights
            drafters[f"{name}@init"] = head_drafter(DraftHead.for_target(
                source, drafters[name].head.config.num_hidden_layers, drafters[name].head.vocab), ours_model)
    extra = {}
    fast = None
    if a.compile:  # a second copy, compiled, so the transformers and eager rows stay eager
        from spectune.decode.compiled import compile_model, warm_up

        fast = load(a.model, dtype)
        lean_llama.install(fast)
        fast = compile_model(fast)
        extra["compile_seconds"] = round(warm_up(fast, batched=True, quiet=True), 1)
        print(f"  {dtype}: compiled in {extra['compile_seconds']} s", flush=True)
    for p in prompts:
        ids = prompt_ids(tok, p["messages"])

        def hf(ids=ids, **extra):
            t0 = time.perf_counter()
            out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=a.max_new_tokens,
                                 do_sample=False, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                                 **extra)
            return out[0, ids.shape[1]:].tolist(), time.perf_counter() - t0, None

        def ours(draft, ids=ids, target=ours_model):
            m = Metrics()
            t0 = time.perf_counter()
            out = [t for chunk in decode(target, ids[0].tolist(), max_new_tokens=a.max_new_tokens, eos=eos,
                                         drafter=drafters.get(draft), metrics=m) for t in chunk]
            return out, time.perf_counter() - t0, m

        if not rows:
            hf()  # warm-up: first calls pay for allocation and kernel selection
            ours(None)
            if fast is not None:
                ours(None, target=fast)
        decoders = [("transformers", hf), ("transformers+lookup", lambda: hf(prompt_lookup_num_tokens=10)),
                    ("ours", lambda: ours(None)), ("ours+lookup", lambda: ours("lookup")),
                    ("ours+lookup-chain", lambda: ours("lookup-chain")),
                    (f"ours+layers:{a.layers}", lambda: ours(f"layers:{a.layers}"))]
        trained = [d for d in drafters if not d.startswith(("lookup", "layers:"))]
        decoders += [(f"ours+{d}", lambda d=d: ours(d)) for d in trained]
        if fast is not None:
            decoders += [("ours compiled", lambda: ours(None, target=fast)),
                         ("ours compiled+lookup", lambda: ours("lookup", target=fast))]
            decoders += [(f"ours compiled+{d}", lambda d=d: ours(d, target=fast)) for d in trained
                         if not d.endswith("@init")]
        for name, fn in decoders:
            with torch.no_grad():
                out, seconds, m = fn()
            outs[p["id"], name] = out
            ref = outs[p["id"], reference(name)]
            rows.append({"dtype": dtype, "kind": p["kind"], "id": p["id"], "decoder": name, "new_tokens": len(out),
                         "seconds": round(seconds, 4), "exact": out == ref,
                         "passes": m.target_passes if m else None, "drafted": m.drafted if m else 0,
                         "accepted": m.accepted if m else 0})
        print(f"  {dtype} {p['id']:8} " + "  ".join(f"{r['decoder']} {r['new_tokens'] / r['seconds']:.1f}"
                                                   for r in rows[-len(decoders):]), flush=True)
    batch = batch_rows(ours_model, tok, prompts, outs, rows, a.max_new_tokens, eos, drafters["lookup"])
    if fast is not None:
        batch.update(batch_rows(fast, tok, prompts, outs, rows, a.max_new_tokens, eos, drafters["lookup"],
                                "ours compiled"))
    from spectune.quantize import weight_bytes

    return rows, {"weight_bytes": weight_bytes(model), "lean_forward": lean, **extra, **batch}


def draft_runs(specs: list[str] | None) -> list[tuple[str, str]]:
    """--draft-run values, DIR or NAME=DIR: (row name, run folder); a bare DIR is `distilled`."""
    out = []
    for spec in specs or []:
        name, _, run = spec.rpartition("=")
        out.append((name or ("distilled" if not out else Path(run).name), run))
    return out


def reference(decoder: str) -> str:
    """What a decoder's text is checked against: a drafter's against its own plain decoding, our eager
    plain against transformers, our compiled plain against our eager plain."""
    if "+" in decoder:
        return decoder.split("+")[0]
    return {"ours": "transformers", "ours compiled": "ours"}.get(decoder, decoder)


def batch_rows(model, tok, prompts, outs, rows, max_new_tokens, eos, lookup, plain="ours") -> dict:
    """The first prompt of (up to) four kinds decoded as one batch of 4, plain and with look-up, against the
    same prompts at batch 1 (from the rows above): throughput, and per-row equality."""
    from spectune.decode.engine import decode_batch

    kinds = list(dict.fromkeys(p["kind"] for p in prompts))
    firsts = [next(p for p in prompts if p["kind"] == k) for k in kinds]
    chosen = (firsts + [p for p in prompts if p not in firsts])[:4]  # 4 different prompts, kinds first
    result = {}
    for name, drafter in ((plain, None), (f"{plain}+lookup", lookup)):
        queue = requests(tok, chosen, max_new_tokens, eos)
        got = {id(r): [] for _, r in queue}
        t0 = time.perf_counter()
        for events in decode_batch(model, [r for _, r in queue], drafter=drafter, pad_id=0):
            for r, tokens in events:
                got[id(r)] += tokens
        result[f"batch4 {name}"] = against_batch1(got, time.perf_counter() - t0, queue, outs, rows, name)
        result[f"streams4 {name}"] = streams(model, tok, prompts, outs, rows, max_new_tokens, eos, drafter, name)
    return result


def streams(model, tok, prompts, outs, rows, max_new_tokens, eos, drafter, name, width: int = 4) -> dict:
    """Every prompt of the run through 4 concurrent streams, as a server batches them (continuous
    batching: a prompt joins as soon as a row finishes), against the same prompts one at a time."""
    from spectune.decode.engine import Batch

    queue = requests(tok, prompts, max_new_tokens, eos)
    got = {id(r): [] for _, r in queue}
    batch = Batch(model, drafter=drafter, pad_id=0)
    waiting = list(queue)
    t0 = time.perf_counter()
    while waiting or len(batch):
        joining = [r for _, r in waiting[:width - len(batch)]]
        waiting = waiting[len(joining):]
        events = batch.add(joining) if joining else batch.step()
        for r, tokens in events:
            got[id(r)] += tokens
    return against_batch1(got, time.perf_counter() - t0, queue, outs, rows, name)


def requests(tok, prompts, max_new_tokens, eos) -> list:
    """(prompt, engine Request) pairs for the prompts."""
    from spectune.decode.engine import Request
    from spectune.generate import prompt_ids

    return [(p, Request(prompt_ids(tok, p["messages"])[0].tolist(), max_new_tokens=max_new_tokens, eos=eos))
            for p in prompts]


def against_batch1(got: dict, seconds: float, queue: list, outs: dict, rows: list, name: str) -> dict:
    """Throughput of the batched tokens `got` (per request id), the same prompts' batch-1 throughput
    (from the rows above) and whether every row's text equals its batch-1 text."""
    ids = {p["id"] for p, _ in queue}
    solo = [r for r in rows if r["decoder"] == name and r["id"] in ids]
    return {"tokens_per_s": sum(map(len, got.values())) / seconds,
            "batch1_tokens_per_s": sum(r["new_tokens"] for r in solo) / sum(r["seconds"] for r in solo),
            "exact": all(got[id(r)] == outs[p["id"], name] for p, r in queue)}


def num(x) -> str:
    return "-" if x is None else f"{x:.2f}"


def summarize(rows: list[dict]) -> list[dict]:
    groups = defaultdict(list)
    for r in rows:
        groups[r["dtype"], r["kind"], r["decoder"]].append(r)
    out = []
    for (dtype, kind, decoder), rs in groups.items():
        passes = sum(r["passes"] or 0 for r in rs)
        drafted = sum(r["drafted"] for r in rs)
        out.append({"dtype": dtype, "kind": kind, "decoder": decoder, "prompts": len(rs),
                    "tokens_per_s": sum(r["new_tokens"] for r in rs) / sum(r["seconds"] for r in rs),
                    "tau": sum(r["new_tokens"] for r in rs) / passes if passes else None,
                    "acceptance": sum(r["accepted"] for r in rs) / drafted if drafted else None,
                    "exact": all(r["exact"] for r in rs)})
    return out


def kind_tables(summary: list[dict], kinds: list[str]) -> str:
    """README's tables: per dtype, a row per kind and a column per decoder. A cell: tokens/s (ratio
    against transformers at that dtype for plain decoders, against the same setting's plain decoding
    for drafters; tau / acceptance) and = / ≠ for the same tokens as the reference()."""
    out = []
    for dtype in dict.fromkeys(s["dtype"] for s in summary):
        cells = {(s["kind"], s["decoder"]): s for s in summary if s["dtype"] == dtype}
        decoders = list(dict.fromkeys(d for _, d in cells))
        out += [f"**{dtype}**", "", "| kind | " + " | ".join(decoders) + " |", "|---|" + "---|" * len(decoders)]
        ratios = defaultdict(list)
        for kind in kinds:
            row = []
            for d in decoders:
                s = cells[kind, d]
                ratio = s["vs_ours_plain"] if "+" in d and d.startswith("ours") else s["vs_transformers"]
                ratios[d].append(ratio)
                spec = f", tau {s['tau']:.2f} / {s['acceptance']:.0%}" if s["acceptance"] is not None else ""
                row.append(f"{s['tokens_per_s']:.1f} ({ratio:.2f}x{spec}) {'=' if s['exact'] else '≠'}")
            out.append(f"| {kind} | " + " | ".join(row) + " |")
        out += ["| mean ratio | " + " | ".join(f"mean {sum(ratios[d]) / len(ratios[d]):.2f}x" for d in decoders)
                + " |", ""]
    return "\n".join(out)


def pick_prompts(per_kind: int, kinds: str | None = None, path: str | None = None) -> list[dict]:
    """The first `per_kind` prompts of each kind (of `kinds`, comma-separated, if given) of
    bench/prompts.jsonl, or of `path`: JSONL {"messages"} chats (a final assistant turn dropped),
    one kind named after the file."""
    prompts = [json.loads(x) for x in Path(__file__).with_name("prompts.jsonl").read_text().splitlines()]
    if path:
        kind = Path(path).stem
        chats = [json.loads(x)["messages"] for x in Path(path).read_text().splitlines() if x.strip()]
        prompts = [{"kind": kind, "id": f"{kind}-{i}", "messages": m[:-1] if m[-1]["role"] == "assistant" else m}
                   for i, m in enumerate(chats)]
    taken = defaultdict(int)
    chosen = []
    for p in prompts:
        if taken[p["kind"]] < per_kind and (not kinds or p["kind"] in kinds.split(",")):
            taken[p["kind"]] += 1
            chosen.append(p)
    return chosen


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--per-kind", type=int, default=8, help="prompts of each kind (at most 8)")
    ap.add_argument("--dtypes", default="fp32,bf16,int8")
    ap.add_argument("--layers", type=int, default=8, help="N for the layers:N draft")
    ap.add_argument("--draft-run", action="append", help="also a draft distilled for --model (`spectune distill "
                                                         "--out DIR`), as DIR or NAME=DIR; repeatable")
    ap.add_argument("--kinds", help="only these kinds, comma-separated")
    ap.add_argument("--prompts", help="another prompt set: JSONL of {\"messages\"} chats (a final assistant turn "
                                      "is dropped), e.g. a draft's own domain; its kind is the file's name")
    ap.add_argument("--compile", action="store_true", help="also our engine on a compiled copy of the model")
    ap.add_argument("--json", default="bench/decode.json")
    a = ap.parse_args()

    from spectune.loading import load_tokenizer

    torch.set_num_threads(os.cpu_count() or 2)
    prompts = pick_prompts(a.per_kind, a.kinds, a.prompts)
    tok = load_tokenizer(a.model)
    gbs = bandwidth_gbs()
    rows, extra = [], {}
    for dtype in a.dtypes.split(","):
        r, e = run_dtype(a, tok, dtype, prompts)
        rows += r
        extra[dtype] = e
    summary = summarize(rows)
    find = {(s["dtype"], s["kind"], s["decoder"]): s for s in summary}
    kinds = list(dict.fromkeys(p["kind"] for p in prompts))
    hf_fp32 = {k: find.get(("fp32", k, "transformers")) for k in kinds}
    print(f"\n{a.model}, greedy, batch 1, {a.max_new_tokens} new tokens max, {a.per_kind} prompts per kind, "
          f"{os.cpu_count()} CPU cores, read bandwidth {gbs:.1f} GB/s")
    print("| dtype | kind | decoder | tokens/s | vs transformers (same dtype) | vs transformers fp32 | "
          "vs our plain | tau | acceptance | same text |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for s in summary:
        ref = find[s["dtype"], s["kind"], "transformers"]["tokens_per_s"]
        plain = find[s["dtype"], s["kind"], reference(s["decoder"]) if "+" in s["decoder"] else "ours"]["tokens_per_s"]
        base = hf_fp32[s["kind"]]["tokens_per_s"] if hf_fp32[s["kind"]] else float("nan")
        s.update(vs_transformers=s["tokens_per_s"] / ref, vs_transformers_fp32=s["tokens_per_s"] / base,
                 vs_ours_plain=s["tokens_per_s"] / plain)
        print(f"| {s['dtype']} | {s['kind']} | {s['decoder']} | {s['tokens_per_s']:.1f} | "
              f"{s['vs_transformers']:.2f}x | "
              f"{s['vs_transformers_fp32']:.2f}x | {s['vs_ours_plain']:.2f}x | "
              f"{num(s['tau'])} | {num(s['acceptance'])} | "
              f"{'yes' if s['exact'] else 'NO'} |")
    print("\n" + kind_tables(summary, kinds))
    print("\n| dtype | setting | tokens/s | batch 1 tokens/s | ratio | same text as batch 1 |")
    print("|---|---|---|---|---|---|")
    for dtype, e in extra.items():
        for name in [n for n in e if n.startswith(("batch4 ", "streams4 "))]:
            b = e[name]
            print(f"| {dtype} | {name} | {b['tokens_per_s']:.1f} | {b['batch1_tokens_per_s']:.1f} | "
                  f"{b['tokens_per_s'] / b['batch1_tokens_per_s']:.2f}x | {'yes' if b['exact'] else 'NO'} |")
    print("\n| dtype | decoder | weights read per token | bound (tokens/s) | plain tokens/s, all kinds | "
          "fraction of bound |\n|---|---|---|---|---|---|")
    for dtype, e in extra.items():
        bound = gbs * 1e9 / e["weight_bytes"]
        for decoder in ("transformers", "ours", "ours compiled"):
            rs = [r for r in rows if r["dtype"] == dtype and r["decoder"] == decoder]
            if not rs:
                continue
            rate = sum(r["new_tokens"] for r in rs) / sum(r["seconds"] for r in rs)
            e[f"{decoder}_fraction_of_bound"] = rate / bound
            print(f"| {dtype} | {decoder} | {e['weight_bytes'] / 1e6:.0f} MB | {bound:.1f} | {rate:.1f} | "
                  f"{rate / bound:.0%} |")
    try:
        import llama_cpp  # noqa: F401

        print("\nllama.cpp reference: llama-cpp-python is installed; python bench/llamacpp.py measures it against "
              "transformers and our fastest settings in one run.")
    except ImportError:
        print("\nllama.cpp reference: llama-cpp-python is not installed in this environment (not measured; "
              "bench/llamacpp.py says how).")
    Path(a.json).write_text(json.dumps({"model": a.model, "max_new_tokens": a.max_new_tokens, "per_kind": a.per_kind,
                                        "bandwidth_gbs": gbs, "summary": summary, "extra": extra, "rows": rows,
                                        "date": time.strftime("%Y-%m-%d")}, indent=1))
    print(f"written to {a.json}")


if __name__ == "__main__":
    main()
