"""Tree drafts for prompt look-up: besides the chain the look-up drafter proposes, a few branches, the
other continuations the context offers where they are likely enough, all verified in one pass.

Why: the context often continues an n-gram in more than one way (a name followed by two different
words, a list item repeated with a different ending), and the chain follows only the most recent
occurrence. Replaying the target's greedy answers (bench/lookup_bound.py's prompts) with an oracle
that picks the best continuation among every earlier occurrence put look-up's decoding steps at
1.78-2.05x plain on the grounded kinds, against 1.32-1.54x for the chain. But every position of a
pass costs time too, so a branch is worth its position only when it is likely: a position is added
when the estimated probability that the target's greedy text runs through it is at least THRESHOLD,
at most EXTRA positions a pass, and the engine offers only the positions our product kernels
multiply together with the chain's anyway (draft_length.row_tile), at batch 1, for greedy rows.

The estimate, per candidate token c after a node at depth d (the tokens the context continues the
node's prefix with, over every earlier occurrence of the context's last token whose continuation
matches that prefix): share(c) = the fraction of those occurrences continuing with c, and
n = the longest n-gram (at most 5) one of them matched, plus d, the tokens already matched along the
way. P(c | its parent) = share(c) * (1 - 0.65 * 0.75^(n-1)): a fit to how often the target took such
a token on the prompts bench/decode.py does not time (0.35 after a match of one token, 0.84 after
six, when every occurrence agrees). THRESHOLD and EXTRA were chosen by replaying the target's greedy
answers through the engine's draft-length policy with pass costs measured per number of positions
(bf16, int8, fp32): over the chain alone, decoding steps 1.0-7.7% faster on the grounded kinds
(summarization, passage QA, retrieval, code editing) of the prompts bench/decode.py does not time
and 1.0-4.9% on those it times; chat, translation and math -1.5% to +6.1%. A lower threshold drafts
more branches that miss (0.15, on the timed prompts: code editing +6.7%, chat and translation -0.2% and -0.7%).

Layout (what the engine and step.c take): the chain's tokens first, then the branches, parents
before children; parents[i] is the pass position of token i's parent (0: the row's last token, j+1:
token j), so position i+1 of the pass attends to the cache and to its ancestors only.
"""

from __future__ import annotations

import heapq

EXTRA = 2  # branch positions a pass may add to the chain
THRESHOLD = 0.25  # a branch position's estimated probability of being on the target's path, at least
MAX_NGRAM = 5


def _confidence(n: int) -> float:
    return 1.0 - 0.65 * 0.75 ** (n - 1)


class _Node:
    __slots__ = ("token", "occ", "kids")

    def __init__(self, token: int, occ: list[tuple[int, int]]):
        self.token, self.occ, self.kids = token, occ, None  # occ: (continuation start, match length)

    def children(self, context: list[int], depth: int) -> dict[int, _Node]:
        """The tokens the occurrences continue this node's prefix with (built once, on demand)."""
        if self.kids is None:
            groups: dict[int, list[tuple[int, int]]] = {}
            for s, n in self.occ:
                if s + depth < len(context):
                    groups.setdefault(context[s + depth], []).append((s, n))
            self.kids = {t: _Node(t, occ) for t, occ in groups.items()}
        return self.kids

    def chance(self, child: _Node, depth: int) -> float:
        """P(the target's text continues with `child` | it reached this node), see the module's docstring."""
        n = min(max(m for _, m in child.occ), MAX_NGRAM) + depth
        return len(child.occ) / len(self.occ) * _confidence(n)


class Occurrences:
    """Every earlier occurrence of a context's last token, most recent first: (where its continuation
    starts, how many tokens of the context's tail it matches, at most `max_ngram`).

    Why an index: scanning the whole context at every decoding step cost about 3 ms a step at 8,000
    tokens (the look-up drafter's n-gram search), a tenth of a step; with the index, chain and tree
    together about 0.01 ms (random tokens, one match; measured here). A row's context only grows (the
    engine passes the same list, extended), so the positions of each token are kept and extended by
    the new tokens only; another list, or a shorter one, is indexed afresh."""

    def __init__(self, max_ngram: int = MAX_NGRAM):
        self.max_ngram = max_ngram
        self.context: list[int] | None = None
        self.indexed = 0  # positions [0, indexed) are in `where`
        self.where: dict[int, list[int]] = {}
        self.last: tuple[int, list] = (-1, [])  # (end, answer): the drafter asks twice a step

    def __call__(self, context: list[int]) -> list[tuple[int, int]]:
        end = len(context) - 1  # the last token's position: its earlier occurrences are before it
        if context is not self.context or end < self.indexed:
            self.context, self.indexed, self.where, self.last = context, 0, {}, (-1, [])
        if self.last[0] == end:
            return self.last[1]
        for i in range(self.indexed, end):
            self.where.setdefault(context[i], []).append(i)
        self.indexed = max(self.indexed, end)
        out = []
        for s in reversed(self.where.get(context[-1], ())):
            n = 1
            while n < self.max_ngram and s - n >= 0 and context[s - n] == context[end - n]:
                n += 1
            out.append((s + 1, n))
        self.last = (end, out)
        return out


def grow(context: list[int], chain: list[int], k: int, extra: int = EXTRA, threshold: float = THRESHOLD,
         occurrences: list[tuple[int, int]] | None = None) -> tuple[list[int], list[int]]:
    """(tokens, parents): `chain` (the look-up drafter's proposal, at most k tokens) followed by at most
    `extra` branch tokens, each on a path no deeper than k; parents as pass positions (see above).
    `occurrences`: the context's, if the caller has them (Occurrences; matches past MAX_NGRAM count as it)."""
    parents = list(range(len(chain)))  # the chain: each token's parent is the position before it
    if extra <= 0 or k <= 0 or len(context) < 2:
        return list(chain), parents
    root = _Node(context[-1], occurrences if occurrences is not None else Occurrences()(context))
    if not root.occ:
        return list(chain), parents
    heap: list = []  # (-probability, tie, node, its depth, its parent's pass position)
    tie = 0

    def offer(parent: _Node, depth: int, p: float, at: int, skip: int | None) -> None:
        nonlocal tie
        if depth >= k:
            return
        for token, child in parent.children(context, depth).items():
            q = p * parent.chance(child, depth)
            if token != skip and q >= threshold:
                tie += 1
                heapq.heappush(heap, (-q, tie, child, depth, at))

    node, p = root, 1.0
    for d, token in enumerate(chain):  # the chain's siblings, shallowest first by probability
        nxt = node.children(context, d).get(token)
        offer(node, d, p, d, token)
        if nxt is None:  # (a chain is an occurrence's continuation: it is in the tree)
            break
        p *= node.chance(nxt, d)
        node = nxt
    else:
        offer(node, len(chain), p, len(chain), None)  # continuing past the chain's end
    tokens = list(chain)
    while heap and len(tokens) < len(chain) + extra:
        q, _, child, depth, at = heapq.heappop(heap)
        tokens.append(child.token)
        parents.append(at)
        offer(child, depth + 1, -q, len(tokens), None)
    return tokens, parents


def ancestors(parents: list[int]) -> list[list[int]]:
    """Per pass position (0: the row's last token, i+1: token i), the positions it sees, itself
    included, in order."""
    seen = [[0]]
    for i, p in enumerate(parents):
        seen.append([*seen[p], i + 1])
    return seen


def accept(tokens: list[int], parents: list[int], best: list[int]) -> tuple[list[int], int]:
    """Greedy verification of a tree: (the pass positions of the accepted path, in order, the token
    after it), walking from the row's last token while a child is the target's argmax there.
    best[j]: the target's argmax at pass position j."""
    kids: dict[int, dict[int, int]] = {}
    for i, (t, p) in enumerate(zip(tokens, parents, strict=True)):
        kids.setdefault(p, {}).setdefault(t, i + 1)  # (a repeated sibling: the first one counts)
    path, at = [], 0
    while (nxt := kids.get(at, {}).get(best[at])) is not None:
        path.append(nxt)
        at = nxt
    return path, best[at]
