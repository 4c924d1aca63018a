"""The reports: token-level per-label (classic format) and entity-level (seqeval) for NER;
accuracy, macro-F1, per-class report and confusion matrix for classification; loss and
perplexity for causal LM. Each is a dict (for JSON) and a text rendering (for people)."""

from __future__ import annotations

from pathlib import Path


def _sk_report(y_true, y_pred, labels) -> dict:
    from sklearn.metrics import classification_report as sk

    raw = sk(y_true, y_pred, labels=labels, output_dict=True, zero_division=0)
    raw.pop("accuracy", None)  # shown as "micro avg" instead, the classic layout
    if "micro avg" not in raw and labels:
        from sklearn.metrics import precision_recall_fscore_support as prfs

        p, r, f, _ = prfs(y_true, y_pred, labels=labels, average="micro", zero_division=0)
        raw["micro avg"] = {"precision": p, "recall": r, "f1-score": f, "support": sum(raw[lab]["support"]
                                                                                        for lab in labels)}
    order = [*labels, "micro avg", "macro avg", "weighted avg"]
    return {k: {"precision": v["precision"], "recall": v["recall"], "f1": v["f1-score"], "support": int(v["support"])}
            for k, v in sorted(raw.items(), key=lambda kv: order.index(kv[0]))}


def ner_report(true_tags: list[list[str]], pred_tags: list[list[str]]) -> dict:
    from seqeval.metrics import classification_report as seq_report
    from seqeval.metrics import f1_score, precision_score, recall_score

    flat_t = [t for s in true_tags for t in s]
    flat_p = [t for s in pred_tags for t in s]
    labels = ["O"] + sorted({t for t in flat_t if t != "O"}, key=lambda t: (t[2:], t[:2]))
    per_type = seq_report(true_tags, pred_tags, output_dict=True, zero_division=0)
    entity = {"precision": precision_score(true_tags, pred_tags, zero_division=0),
              "recall": recall_score(true_tags, pred_tags, zero_division=0),
              "f1": f1_score(true_tags, pred_tags, zero_division=0),
              "per_type": {k: {"precision": v["precision"], "recall": v["recall"], "f1": v["f1-score"],
                               "support": int(v["support"])}
                           for k, v in per_type.items() if not k.endswith("avg")}}
    return {"task": "ner",
            "token_report": _sk_report(flat_t, flat_p, labels),
            "token_report_without_O": _sk_report(flat_t, flat_p, labels[1:]) if len(labels) > 1 else {},
            "entity": entity,
            # entity-level figures again at the top, for --metric and metrics.csv
            "f1": entity["f1"], "precision": entity["precision"], "recall": entity["recall"]}


def classification_report(y_true: list[str], y_pred: list[str], labels: list[str]) -> dict:
    from sklearn.metrics import accuracy_score, confusion_matrix, f1_score

    return {"task": "classify",
            "accuracy": accuracy_score(y_true, y_pred),
            "macro_f1": f1_score(y_true, y_pred, labels=labels, average="macro", zero_division=0),
            "report": _sk_report(y_true, y_pred, labels),
            "labels": labels,
            "confusion_matrix": confusion_matrix(y_true, y_pred, labels=labels).tolist()}


def format_table(report: dict, title: str) -> str:
    """sklearn's classic layout: precision recall f1-score support, then the averages."""
    width = max([len(k) for k in report] + [12])
    lines = [title, f"{'':>{width}} {'precision':>9} {'recall':>9} {'f1-score':>9} {'support':>9}"]
    rows = [k for k in report if not k.endswith("avg")] + [""] + [k for k in report if k.endswith("avg")]
    for k in rows:
        v = report.get(k)
        lines.append("" if v is None else
                     f"{k:>{width}} {v['precision']:9.4f} {v['recall']:9.4f} {v['f1']:9.4f} {v['support']:9d}")
    return "\n".join(lines)


def format_report(metrics: dict) -> str:
    task = metrics.get("task")
    if task == "ner":
        e = metrics["entity"]
        parts = [format_table(metrics["token_report"], "Token-level report (per tag, O included)"),
                 format_table(metrics["token_report_without_O"], "Token-level report (O excluded)"),
                 format_table({**e["per_type"], "overall avg": {**e, "support": sum(
                     v["support"] for v in e["per_type"].values())}},
                     "Entity-level report (seqeval, conlleval-compatible)")]
        parts.append(f"entity-level F1: {e['f1']:.4f}   (precision {e['precision']:.4f}, recall {e['recall']:.4f})")
        return "\n\n".join(parts)
    if task == "classify":
        return (format_table(metrics["report"], "Per-class report") +
                f"\n\naccuracy: {metrics['accuracy']:.4f}   macro-F1: {metrics['macro_f1']:.4f}")
    return f"loss: {metrics['loss']:.4f}   perplexity: {metrics['perplexity']:.2f}"


def plot_confusion(metrics: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels, cm = metrics["labels"], metrics["confusion_matrix"]
    fig, ax = plt.subplots(figsize=(1.2 + 0.6 * len(labels), 1 + 0.6 * len(labels)))
    ax.imshow(cm, cmap="Blues")
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    top = max(max(r) for r in cm) or 1
    for i, row in enumerate(cm):
        for j, v in enumerate(row):
            ax.text(j, i, str(v), ha="center", va="center", color="white" if v > top / 2 else "black")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
