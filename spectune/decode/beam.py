"""Beam search (deterministic), with transformers' scoring so the same settings give the same text.

Per step every running beam's log-probabilities are added to its score and the best
`keep = max(2, 1 + #eos) * beams` continuations over all beams are taken. Continuations that end
(EOS, or the length limit) among the top `beams` become finished hypotheses, scored
sum_logprobs / new_length ** length_penalty; the best `beams` unfinished ones run on, and the KV
cache rows are reordered to follow their parents. The search stops when no running beam can beat
the worst finished one any more (transformers' default, early_stopping=False heuristic) or when
every continuation ends.
"""

from __future__ import annotations

import torch

NEG = -1.0e9


@torch.no_grad()
def beam_search(model, prompt: list[int], *, beams: int = 4, max_new_tokens: int = 128, eos: set[int] | None = None,
                length_penalty: float = 1.0) -> tuple[list[int], float]:
    """(new tokens of the best hypothesis, its score)."""
    from transformers import DynamicCache

    from .engine import cache_kwargs

    eos = sorted(eos or ())
    keep = max(2, 1 + len(eos)) * beams
    top_beams = torch.arange(keep) < beams  # only these may finish: the rest are spares to run on
    cache = DynamicCache(config=model.config)
    # The prompt once per beam, as transformers prefills it (same shapes, same rounding).
    ids = torch.tensor([prompt] * beams)  # (beams, P)
    logits = model(input_ids=ids, use_cache=True, logits_to_keep=1, **cache_kwargs(model, cache)).logits[:, -1]
    running = [[] for _ in range(beams)]
    scores = torch.full((beams,), NEG)  # running beams' summed log-probabilities
    scores[0] = 0.0  # all beams start equal: only the first may expand, or the top-k would repeat itself
    finished: list[tuple[float, list[int]]] = [(NEG, [])] * beams
    done_slots = [False] * beams
    improvable = True
    while True:
        vocab = logits.shape[-1]
        total = (torch.log_softmax(logits.float(), -1) + scores[:, None]).reshape(-1)  # (beams * V,)
        top_scores, top_idx = torch.topk(total, keep)  # (keep,)
        parents, tokens = (top_idx // vocab).tolist(), (top_idx % vocab).tolist()
        length = len(running[0]) + 1  # new tokens in every candidate
        ends = torch.tensor([t in eos or length >= max_new_tokens for t in tokens])  # (keep,)
        candidates = [running[p] + [t] for p, t in zip(parents, tokens, strict=True)]

        # finished hypotheses: merge the ending top candidates into the best `beams` so far
        final = top_scores / (length ** length_penalty)
        final = final + (0.0 if improvable else NEG) + (~(ends & top_beams)).float() * NEG
        merged_scores = torch.tensor([s for s, _ in finished] + final.tolist())
        merged = finished + list(zip(final.tolist(), candidates, strict=True))
        merged_done = done_slots + (ends & top_beams).tolist()
        best = torch.topk(merged_scores, beams).indices.tolist()
        finished = [merged[i] for i in best]
        done_slots = [merged_done[i] for i in best]

        # running beams: the best continuations that did not end
        next_idx = torch.topk(top_scores + ends.float() * NEG, beams).indices  # (beams,)
        scores = (top_scores + ends.float() * NEG)[next_idx]
        running = [candidates[i] for i in next_idx.tolist()]
        order = torch.tensor([parents[i] for i in next_idx.tolist()])
        if bool(ends.all()):
            break
        worst = min(s for s, _ in finished) if all(done_slots) else NEG
        improvable = improvable and float(scores[0]) / (length ** length_penalty) > worst
        if not improvable:
            break
        cache.reorder_cache(order)
        step = torch.tensor([[seq[-1]] for seq in running])  # (beams, 1)
        logits = model(input_ids=step, use_cache=True, **cache_kwargs(model, cache)).logits[:, -1]  # (beams, V)
    score, tokens = finished[0]
    return tokens, score
