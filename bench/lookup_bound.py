"""How far can prompt look-up go on these prompts? Our look-up drafter against an oracle, replayed
over the target's own greedy text.

The target (SmolLM2-135M, bf16, our engine) answers the prompts bench/decode.py does not time
(prompts 2-7 of each kind); each answer is then replayed pass by pass: at each pass a drafter
proposes up to K tokens from the context (prompt + answer so far), the longest prefix equal to the
answer is accepted, and the target's token follows, as greedy verification does. Three drafters:
- `lookup`: spectune's LookupDrafter (decode/drafters.py) proposing chains;
- `tree`: the same chain with its tree drafts (decode/lookup_tree.py: up to 2 branch positions, within
  the 6 positions of the kernels' bf16 tile), verified along whichever branch the answer takes, every
  position charged;
- `oracle`: every earlier occurrence of each 1- to 5-gram ending the context is a candidate, and the
  pass takes the one with the longest accepted run, as if all candidates were verified at once
  (tree verification) and only the winning path cost anything: no look-up drafter can do better.
Reported per kind: tau (tokens per pass) and tokens per unit of pass time, a pass of 1 + d
positions costing 1 + alpha * d one-token passes (alpha = 0.085, draft_length.row_cost for fp32):
the decoding steps' speed-up over plain decoding, before prompt prefill (the same in both) dilutes it.
Usage: python bench/lookup_bound.py [--k 8] [--json bench/lookup-bound.json]   (about 2 minutes)
"""

from __future__ import annotations

import argparse
import json
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent


def answers(tok, prompts: list[dict]) -> list[tuple[str, list[int], list[int]]]:
    from decode import load

    from spectune.decode import lean_llama
    from spectune.decode.engine import decode
    from spectune.generate import prompt_ids

    model = load("smollm2-135m", "bf16")
    lean_llama.install(model)
    out = []
    for p in prompts:
        ids = prompt_ids(tok, p["messages"])[0].tolist()
        text = [t for chunk in decode(model, ids, max_new_tokens=128, eos={tok.eos_token_id}) for t in chunk]
        out.append((p["kind"], ids, text))
    return out


def accepted(proposal: list[int], answer: list[int], pos: int) -> int:
    n = 0
    while n < len(proposal) and pos + n < len(answer) and proposal[n] == answer[pos + n]:
        n += 1
    return n


def oracle(context: list[int], answer: list[int], pos: int, k: int) -> int:
    """Accepted length of the best continuation of any earlier occurrence of a 1..5-gram tail."""
    best, n_ctx = 0, len(context)
    for n in range(1, min(5, n_ctx - 1) + 1):
        tail = context[n_ctx - n:]
        for start in range(n_ctx - n - 1, -1, -1):
            if context[start:start + n] == tail:
                best = max(best, accepted(context[start + n:start + n + k], answer, pos))
    return best


def replay(runs, k: int, alpha: float) -> dict:
    from spectune.decode.drafters import LookupDrafter
    from spectune.decode.engine import GREEDY

    lookup = LookupDrafter()
    from spectune.decode import lookup_tree
    from spectune.decode.draft_length import row_tile

    tile = row_tile(2, bf16_pairs=True)
    names = ("lookup", "tree", "oracle")
    totals = defaultdict(lambda: {"tokens": 0, **{name: [0, 0.0] for name in names}})
    for kind, prompt, answer in runs:
        t = totals[kind]
        t["tokens"] += len(answer)
        for name in names:
            pos = 0
            while pos < len(answer):
                context, room = prompt + answer[:pos], min(k, len(answer) - pos - 1)
                if name in ("lookup", "tree"):
                    drafts, _ = lookup.propose(context, room, GREEDY, None)
                    n, width = accepted(drafts, answer, pos), len(drafts)
                    if name == "tree" and room:
                        tokens, parents = lookup.propose_tree(context, drafts, room, tile - 1 - len(drafts))
                        depth = [len(seen) - 1 for seen in lookup_tree.ancestors(parents)]  # per pass position
                        best = [answer[pos + d] if pos + d < len(answer) else -1 for d in depth]
                        n, width = len(lookup_tree.accept(tokens, parents, best)[0]), len(tokens)
                else:
                    n = oracle(context, answer, pos, room) if room else 0
                    width = n  # only the winning path is charged: a bound
                t[name][0] += 1
                t[name][1] += 1 + alpha * width
                pos += n + 1
    return {kind: {"tokens": t["tokens"],
                   **{f"{name} tau": round(t["tokens"] / t[name][0], 3) for name in names},
                   **{f"{name} step speed-up": round(t["tokens"] / t[name][1], 3) for name in names}}
            for kind, t in totals.items()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--k", type=int, default=8, help="most drafts per pass")
    ap.add_argument("--json", default=str(ROOT / "lookup-bound.json"))
    a = ap.parse_args()
    from spectune.loading import load_tokenizer

    tok = load_tokenizer("smollm2-135m")
    prompts = [json.loads(line) for line in (ROOT / "prompts.jsonl").read_text().splitlines()]
    by_kind = defaultdict(list)
    for p in prompts:
        by_kind[p["kind"]].append(p)
    chosen = [p for kind in by_kind.values() for p in kind[2:8]]  # the prompts bench/decode.py does not time
    result = replay(answers(tok, chosen), a.k, alpha=0.085)
    names = ("lookup", "tree", "oracle")
    print(f"{'kind':14} {'tokens':>6} " + " ".join(f"{n + ' tau':>10}" for n in names) + " "
          + " ".join(f"{n + ' x':>9}" for n in names))
    for kind, r in result.items():
        print(f"{kind:14} {r['tokens']:6d} " + " ".join(f"{r[n + ' tau']:10.2f}" for n in names) + " "
              + " ".join(f"{r[n + ' step speed-up']:9.2f}" for n in names))
    Path(a.json).write_text(json.dumps({"date": time.strftime("%Y-%m-%d"), "k": a.k, "alpha": 0.085,
                                        "kinds": result}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
