"""Strong classical baselines, for judging our fine-tuned models in the same run.

- NER: a linear-chain CRF (sklearn-crfsuite) over character unigram and bigram window features,
  the classic strong baseline for Chinese NER.
- Text classification: TF-IDF over character 1-3-grams with logistic regression, C chosen on dev.
Both are scored with the same report functions as our models (`evaluate.py`).
"""

from __future__ import annotations

import time

from .data.conll import Sentence
from .data.tabular import LabelledText
from .errors import SpectuneError


def char_features(tokens: list[str], i: int) -> dict[str, float | str]:
    """Unigrams in a +-2 window and the bigrams around position i."""
    def at(j: int) -> str:
        return tokens[j] if 0 <= j < len(tokens) else ("<s>" if j < 0 else "</s>")

    f: dict[str, float | str] = {"bias": 1.0}
    for d in (-2, -1, 0, 1, 2):
        f[f"u{d}"] = at(i + d)
    for d in (-2, -1, 0, 1):
        f[f"b{d}"] = at(i + d) + at(i + d + 1)
    return f


def crf_ner(train: list[Sentence], dev: list[Sentence], test: list[Sentence], c1: float = 0.05,
            c2: float = 0.05, max_iterations: int = 150, extra=None) -> dict:
    """Train a CRF on train, report it on dev and test (entity and token reports, and the test
    predictions). `extra(tokens) -> [dict per token]`: more features beside the character window's
    (bench/ner_lexicon.py's place-name matches)."""
    try:
        import sklearn_crfsuite
    except ImportError:
        raise SpectuneError("the CRF baseline needs sklearn-crfsuite: pip install 'spectune[baselines]'") from None
    from .evaluate import ner_report

    def feats(sents):
        out = []
        for s in sents:
            more = extra(s.tokens) if extra else [{}] * len(s.tokens)
            out.append([{**char_features(s.tokens, i), **more[i]} for i in range(len(s.tokens))])
        return out

    t0 = time.perf_counter()
    crf = sklearn_crfsuite.CRF(algorithm="lbfgs", c1=c1, c2=c2, max_iterations=max_iterations,
                               all_possible_transitions=True)
    crf.fit(feats(train), [s.tags for s in train])
    seconds = time.perf_counter() - t0
    predicted = crf.predict(feats(test))
    return {"train_seconds": round(seconds, 1),
            "dev": ner_report([s.tags for s in dev], crf.predict(feats(dev))),
            "test": ner_report([s.tags for s in test], predicted), "test_tags": predicted}


def tfidf_classifier(train: list[LabelledText], dev: list[LabelledText], test: list[LabelledText],
                     grid=(0.3, 1.0, 3.0, 10.0)) -> dict:
    """TF-IDF char 1-3-grams + logistic regression; C picked by dev accuracy. Also returns the test
    predictions (bench/label_audit.py reads them per review)."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    from .evaluate import classification_report

    t0 = time.perf_counter()
    vec = TfidfVectorizer(analyzer="char", ngram_range=(1, 3), sublinear_tf=True, min_df=2)
    x_train = vec.fit_transform([r.text for r in train])
    x_dev, x_test = vec.transform([r.text for r in dev]), vec.transform([r.text for r in test])
    y_train = [r.label for r in train]
    labels = sorted(set(y_train))
    best = None
    for c in grid:
        clf = LogisticRegression(C=c, max_iter=2000).fit(x_train, y_train)
        acc = (clf.predict(x_dev) == [r.label for r in dev]).mean()
        if best is None or acc > best[0]:
            best = (acc, c, clf)
    _, c, clf = best
    seconds = time.perf_counter() - t0
    predicted = list(clf.predict(x_test))
    return {"train_seconds": round(seconds, 1), "C": c,
            "dev": classification_report([r.label for r in dev], list(clf.predict(x_dev)), labels),
            "test": classification_report([r.label for r in test], predicted, labels), "test_labels": predicted}
