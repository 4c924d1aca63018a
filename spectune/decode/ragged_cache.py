"""One KV cache for rows of different lengths: the batch's ragged bookkeeping.

transformers' caches are rectangles (B, H, T, D) per layer. Rows of a batch differ in prompt length
and, with speculation, in how many drafts each pass accepts. We keep the rectangle and say which
columns a row may attend to with a 2-D attention mask (B, T): prompts are left-padded, rejected
drafts beyond the batch's longest kept block are cropped, shorter rows' surplus columns are masked.
Positions (RoPE) are passed per row, so a masked column changes nothing a row sees: a row's logits
are its logits alone, up to floating-point summation order.

A masked column still costs attention compute, so `compact` drops the holes when they add up, and
`merge` lets new requests join a running batch (continuous batching): their caches are
left-padded to a common length and stacked along the batch.
"""

from __future__ import annotations

import torch


def _layers(cache) -> list:
    layers = getattr(cache, "layers", None)
    if layers is None or any(not hasattr(layer, "keys") for layer in layers):
        raise TypeError(f"{type(cache).__name__}: ragged batching needs a cache with per-layer keys/values")
    return layers


def left_pad(ids: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask), each (B, T), right-aligned so every row's next token is column T."""
    width = max(len(r) for r in ids)
    input_ids = torch.full((len(ids), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(ids), width), dtype=torch.long)
    for b, row in enumerate(ids):
        input_ids[b, width - len(row):] = torch.tensor(row, dtype=torch.long)
        mask[b, width - len(row):] = 1
    return input_ids, mask


def _pad_left(t: torch.Tensor, width: int, dim: int) -> torch.Tensor:
    missing = width - t.shape[dim]
    if missing <= 0:
        return t
    shape = list(t.shape)
    shape[dim] = missing
    return torch.cat([t.new_zeros(shape), t], dim=dim)


def merge(cache_a, mask_a: torch.Tensor, cache_b, mask_b: torch.Tensor):
    """Stack two batches' caches (and masks (B, T)) along the batch: rows of a, then rows of b."""
    width = max(mask_a.shape[1], mask_b.shape[1])
    for la, lb in zip(_layers(cache_a), _layers(cache_b), strict=True):
        la.keys = torch.cat([_pad_left(la.keys, width, 2), _pad_left(lb.keys, width, 2)], 0)  # (Ba+Bb, H, T, D)
        la.values = torch.cat([_pad_left(la.values, width, 2), _pad_left(lb.values, width, 2)], 0)
    return cache_a, torch.cat([_pad_left(mask_a, width, 1), _pad_left(mask_b, width, 1)], 0)


def select(cache, mask: torch.Tensor, rows: list[int]):
    """Keep only `rows` (finished or cancelled rows leave the batch)."""
    index = torch.tensor(rows, dtype=torch.long)
    for layer in _layers(cache):
        layer.keys, layer.values = layer.keys[index], layer.values[index]
    return cache, mask[index]


def crop(cache, mask: torch.Tensor, keep: list[int], fed: int):
    """After a pass that fed `fed` columns, row b keeps the first keep[b] of them: the cache is cut
    to the longest kept block and shorter rows' surplus columns are masked."""
    longest = max(keep)
    if longest < fed:
        cache.crop(longest - fed)
        mask = mask[:, : mask.shape[1] - (fed - longest)]
    start = mask.shape[1] - longest
    for b, n in enumerate(keep):
        mask[b, start + n:] = 0
    return cache, mask


def move_columns(cache, b: int, start: int, path: list[int]) -> None:
    """Row b's columns start + path[j] copied to start + 1 + j, in place: a tree of drafts' accepted
    branch (pass positions `path`, in order) moved up behind the pass's first token, where a chain's
    accepted drafts would be; `crop` then keeps them. Their keys were computed at their own depth, so
    they are what a chain pass would have written there."""
    source = torch.tensor(path, dtype=torch.long) + start
    for layer in _layers(cache):
        layer.keys[b, :, start + 1:start + 1 + len(path)] = layer.keys[b, :, source]
        layer.values[b, :, start + 1:start + 1 + len(path)] = layer.values[b, :, source]


def holes(mask: torch.Tensor) -> float:
    """Fraction of the cache's columns that the longest row does not use."""
    used = int(mask.sum(1).max())
    return 1.0 - used / mask.shape[1] if mask.shape[1] else 0.0


def compact(cache, mask: torch.Tensor):
    """Gather each row's attended columns, in order, left-padded to the longest row's count."""
    counts = mask.sum(1)  # (B,)
    width = int(counts.max())
    index = torch.zeros((mask.shape[0], width), dtype=torch.long)  # (B, width) source column per slot
    new_mask = torch.zeros((mask.shape[0], width), dtype=mask.dtype)
    for b in range(mask.shape[0]):
        cols = mask[b].nonzero().squeeze(1)
        index[b, width - len(cols):] = cols
        new_mask[b, width - len(cols):] = 1
    for layer in _layers(cache):
        B, H = layer.keys.shape[:2]
        layer.keys = layer.keys.gather(2, index[:, None, :, None].expand(B, H, width, layer.keys.shape[-1]))
        layer.values = layer.values.gather(2, index[:, None, :, None].expand(B, H, width, layer.values.shape[-1]))
    return cache, new_mask


def row_layers(cache, mask: torch.Tensor, b: int, layers: int, config):
    """Row b's attended columns of the first `layers` layers, in order, as a one-row DynamicCache (a
    copy): what a draft made of the target's first layers (layers:N) would compute for them itself."""
    from transformers import DynamicCache

    cols = mask[b].nonzero().squeeze(1)
    own = DynamicCache(config=config)
    for i, layer in enumerate(_layers(cache)[:layers]):
        own.update(layer.keys[b:b + 1, :, cols], layer.values[b:b + 1, :, cols], i)
    return own
