"""Where PD1998 NER errs, and what a list of place names buys: the CRF baseline of bench/quality.py
with and without lexicon features, in one run.

Both CRFs read the baseline's character window (spectune/baselines.py); the second also reads, for
each character, whether it begins, continues or ends a name (2-10 characters) of China's
administrative divisions from the `GB2260` package: every county, city and province name coded
from 1980 to 2015, and each one without its suffix (省, 市, 县, 区, 自治州, ...: 深圳市 -> 深圳), 6,368
names. The list owes nothing to the corpus, so nothing of the test split leaks through it.
Reported per CRF: entity F1 on dev and test, and on test the recall of the entities whose string
and type occur in the training split ("seen") and of the others ("unseen"), per type: a month of
news names the same people and places again and again, and the unseen ones are where a model
needs knowledge the training split does not hold.
Usage: python bench/ner_lexicon.py [--json bench/ner-lexicon.json]   (about 8 minutes)
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "data/pd1998-ner"
SUFFIXES = ("维吾尔自治区", "壮族自治区", "回族自治区", "自治区", "自治州", "自治县", "特别行政区", "地区",
            "省", "市", "县", "区", "盟", "旗")
NOT_NAMES = {"市辖区", "县", "省直辖县级行政区划", "省直辖县级行政单位"}


def place_names() -> set[str]:
    try:
        from gb2260.data import data
    except ImportError:
        sys.exit("this benchmark needs the GB2260 package: pip install 'spectune[baselines]'")
    full = {name for year in data.values() for name in year.values()} - NOT_NAMES
    short = set()
    for name in full:
        for suffix in SUFFIXES:
            if name.endswith(suffix) and len(name) - len(suffix) >= 2:
                base = name[: -len(suffix)]
                ethnic = re.match(r"^(.{2,}?)(?:[\u4e00-\u9fff]{1,3}族)+$", base)  # 红河哈尼族彝族 -> 红河
                short.add(ethnic.group(1) if ethnic else base)
                break
    return {n for n in full | short if len(n) >= 2}


def lexicon_features(names: set[str], longest: int = 10):
    def extra(tokens: list[str]) -> list[dict]:
        text = "".join(tokens)
        if len(text) != len(tokens):  # one character per token, as `data prepare pd1998-ner` writes
            raise ValueError("expected one character per token")
        out: list[dict] = [{} for _ in tokens]
        for a in range(len(text)):
            for b in range(a + 2, min(len(text), a + longest) + 1):
                if text[a:b] in names:
                    out[a]["placeB"] = out[b - 1]["placeE"] = 1.0
                    for m in range(a + 1, b - 1):
                        out[m]["placeI"] = 1.0
        return out

    return extra


def spans(tags: list[str]) -> set[tuple[int, int, str]]:
    from seqeval.metrics.sequence_labeling import get_entities

    return {(a, b + 1, t) for t, a, b in get_entities(tags)}


def recall_by_novelty(train, test, predicted) -> dict:
    """Recall of test entities per type, split by whether (string, type) occurs in the training split."""
    seen = {("".join(s.tokens[a:b]), t) for s in train for a, b, t in spans(s.tags)}
    gold, found = Counter(), Counter()
    for s, tags in zip(test, predicted, strict=True):
        got = spans(tags)
        for a, b, t in spans(s.tags):
            key = (t, "seen" if ("".join(s.tokens[a:b]), t) in seen else "unseen")
            gold[key] += 1
            found[key] += (a, b, t) in got
    return {f"{t} {k}": {"entities": n, "recall": round(found[t, k] / n, 4)} for (t, k), n in sorted(gold.items())}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", default=str(ROOT / "bench/ner-lexicon.json"))
    a = ap.parse_args()
    from spectune.baselines import crf_ner
    from spectune.data.conll import read_tagged
    from spectune.data.corpora import prepare

    if not (DATA / "test.conll").exists():
        prepare("pd1998-ner", DATA)
    train, dev, test = (read_tagged(DATA / f"{s}.conll")[0] for s in ("train", "dev", "test"))
    names = place_names()
    rows = []
    for method, extra in (("CRF baseline", None), ("CRF + place names", lexicon_features(names))):
        t0 = time.perf_counter()
        r = crf_ner(train, dev, test, extra=extra)
        rows.append({"method": method, "minutes": round((time.perf_counter() - t0) / 60, 2),
                     "dev_f1": round(r["dev"]["entity"]["f1"], 4), "test": r["test"]["entity"],
                     "recall": recall_by_novelty(train, test, r["test_tags"])})
        print(f"{method}: dev F1 {rows[-1]['dev_f1']:.4f}, test P/R/F1 {r['test']['entity']['precision']:.4f}/"
              f"{r['test']['entity']['recall']:.4f}/{r['test']['entity']['f1']:.4f}", flush=True)
    groups = list(rows[0]["recall"])
    print(f"\ntest recall ({len(names):,} place names)\n{'entities':14} {'count':>6} "
          + " ".join(f"{r['method']:>18}" for r in rows))
    for g in groups:
        print(f"{g:14} {rows[0]['recall'][g]['entities']:6d} "
              + " ".join(f"{r['recall'][g]['recall']:18.3f}" for r in rows))
    Path(a.json).write_text(json.dumps({"date": time.strftime("%Y-%m-%d"), "place_names": len(names),
                                        "rows": rows}, indent=1, default=float))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
