"""--group-by-length: every example once per epoch, batches of neighbours in length, a random
order of batches that depends only on (seed, epoch)."""

import random

from spectune.length_groups import LengthGroupedSampler


def batches(sampler, lengths, size):
    order = list(sampler)
    return [order[i:i + size] for i in range(0, len(order), size)]


def padded(bs, lengths):
    return sum(len(b) * max(lengths[j] for j in b) for b in bs)


def test_each_epoch_is_a_permutation_with_far_less_padding():
    rnd = random.Random(0)
    lengths = [rnd.randint(5, 256) for _ in range(1003)]  # a short last batch
    s = LengthGroupedSampler(lengths, batch_size=8, seed=1, group=10)
    seen = []
    for epoch in range(3):
        s.set_epoch(epoch)
        bs = batches(s, lengths, 8)
        assert sorted(j for b in bs for j in b) == list(range(1003))
        assert [len(b) for b in bs] == [8] * 125 + [3]
        seen.append(bs)
        shuffled = list(range(1003))
        rnd.shuffle(shuffled)
        plain = [shuffled[i:i + 8] for i in range(0, 1003, 8)]
        assert padded(bs, lengths) < 0.75 * padded(plain, lengths)
    assert seen[0] != seen[1] != seen[2]
    # the batches' lengths are not in order: steps see long and short batches mixed
    firsts = [lengths[b[0]] for b in seen[0][:40]]
    assert firsts != sorted(firsts) and firsts != sorted(firsts, reverse=True)


def test_order_depends_only_on_seed_and_epoch():
    lengths = list(range(1, 200))
    a, b = LengthGroupedSampler(lengths, 4, seed=7), LengthGroupedSampler(lengths, 4, seed=7)
    b.set_epoch(2)
    list(b)
    b.set_epoch(1)
    a.set_epoch(1)
    assert list(a) == list(b)  # what came before (a resumed run) does not matter
    c = LengthGroupedSampler(lengths, 4, seed=8)
    c.set_epoch(1)
    assert list(c) != list(a)
