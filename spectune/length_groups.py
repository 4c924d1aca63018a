"""Training order that batches examples of similar length (`--group-by-length`).

A batch pads to its longest example, so a shuffled batch of reviews 10 to 256 tokens long spends
most of its products on padding. Here each epoch is shuffled, cut into groups of `group` batches,
each group sorted by length and cut into batches, and the batches shuffled again: every batch
holds neighbours in length, and the order of the steps stays random. transformers'
LengthGroupedSampler does the first half; ours also reshuffles the batches (its long batches come
first in each group) and takes its randomness from (seed, epoch), so a resumed run, which skips
the epoch's first batches, sees exactly the batches an uninterrupted run would.
"""

from __future__ import annotations

import torch


class LengthGroupedSampler(torch.utils.data.Sampler):
    """Indices for a DataLoader with the same batch_size (and drop_last=False)."""

    def __init__(self, lengths: list[int], batch_size: int, seed: int, group: int = 50):
        self.lengths, self.batch_size, self.seed, self.group = lengths, batch_size, seed, group
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:  # accelerate's DataLoaderShard.set_epoch calls this
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        order = torch.randperm(len(self.lengths), generator=g).tolist()
        size = self.batch_size * self.group
        ordered = []
        for i in range(0, len(order), size):
            ordered += sorted(order[i:i + size], key=lambda j: self.lengths[j], reverse=True)
        batches = [ordered[i:i + self.batch_size] for i in range(0, len(ordered), self.batch_size)]
        # The short last batch stays last: the DataLoader cuts batches every batch_size indices, so
        # a short one in the middle would shift every batch after it.
        full = len(ordered) // self.batch_size
        shuffled = [batches[i] for i in torch.randperm(full, generator=g).tolist()] + batches[full:]
        return iter([j for b in shuffled for j in b])
