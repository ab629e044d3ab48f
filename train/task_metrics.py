"""Evaluation of a task head: predictions on a held-out split -> the metrics its task is judged by.

    metrics = score(split, outputs, spec)   # {"loss": ..., "accuracy": ..., ...}; outputs: one dict per feature

What each kind reports (`METRICS`), computed by the libraries that define them where one exists:
  - sequence classification: `accuracy`, macro `f1`, `matthews` (scikit-learn); regression: `mse`
    (scikit-learn), `pearson`, `spearman` (scipy); multi-label: `accuracy` (every label right), macro `f1`;
  - token classification: entity-level `entity_f1`, `entity_precision`, `entity_recall` (seqeval, CoNLL rules)
    over the words' tags (a word is predicted by its first sub-token) and the word `accuracy`;
  - extractive QA: SQuAD `exact_match` and `f1` (in percent, as the official script), written here: no library
    on PyPI computes them without downloading the script, so `squad_normalize` is the official normalisation
    (lowercase, no punctuation, no articles a/an/the, single spaces) written once;
  - multiple choice: `accuracy`;
  - sequence to sequence: `rouge1`, `rouge2`, `rougeL` (F-measure x 100, Google's `rouge-score`, the package HF's
    `evaluate` wraps) of the beam-search outputs against the targets, and `exact_match` (in percent) of the
    texts; its `loss` is the teacher-forced loss per target token.
Every kind also reports `loss`, the mean of the head's loss over the split's features (log-softmax from scipy).
A metric that is undefined on the predictions (Pearson of a constant) is None.
"""

from __future__ import annotations

import collections
import math
import re
import string
import warnings
from typing import Any, Mapping, Sequence

import numpy as np

from train.data.task_features import (
    IGNORE_INDEX,
    MULTIPLE_CHOICE,
    QUESTION_ANSWERING,
    SEQ2SEQ,
    SEQUENCE_CLASSIFICATION,
    TOKEN_CLASSIFICATION,
    TaskSpec,
    TaskSplit,
)

METRICS = {
    "single_label_classification": ("loss", "accuracy", "f1", "matthews"),
    "multi_label_classification": ("loss", "accuracy", "f1"),
    "regression": ("loss", "mse", "pearson", "spearman"),
    TOKEN_CLASSIFICATION: ("loss", "accuracy", "entity_f1", "entity_precision", "entity_recall"),
    QUESTION_ANSWERING: ("loss", "exact_match", "f1"),
    MULTIPLE_CHOICE: ("loss", "accuracy"),
    SEQ2SEQ: ("loss", "rougeL", "rouge1", "rouge2", "exact_match"),
}
# The metric a run keeps its best checkpoint by unless config.best_metric names another.
HEADLINE = {"single_label_classification": "accuracy", "multi_label_classification": "f1", "regression": "pearson",
            TOKEN_CLASSIFICATION: "entity_f1", QUESTION_ANSWERING: "f1", MULTIPLE_CHOICE: "accuracy",
            SEQ2SEQ: "rougeL"}
LOWER_IS_BETTER = ("loss", "mse")


def metric_group(kind: str, problem_type: str) -> str:
    """The key of `METRICS` / `HEADLINE` for a task: the problem type for sequence classification, else the kind."""
    return problem_type if kind == SEQUENCE_CLASSIFICATION else kind


def score(split: TaskSplit, outputs: Sequence[Mapping[str, np.ndarray]], spec: TaskSpec) -> dict[str, Any]:
    """The metrics of `spec.kind` (`METRICS`) for one output dict per feature of `split` (unpadded: `logits`
    `[num_labels]`, `[length, num_labels]` or `[choices]`; `start_logits` / `end_logits` `[length]`)."""
    if len(outputs) != len(split.features):
        raise ValueError(f"{len(outputs)} outputs for {len(split.features)} features")
    with warnings.catch_warnings():
        # Undefined correlations (constant predictions) warn and give NaN, reported as None.
        warnings.simplefilter("ignore")
        if spec.kind == SEQUENCE_CLASSIFICATION:
            metrics = _sequence_classification(split, outputs, spec)
        elif spec.kind == TOKEN_CLASSIFICATION:
            metrics = _token_classification(split, outputs)
        elif spec.kind == QUESTION_ANSWERING:
            metrics = _question_answering(split, outputs, spec)
        elif spec.kind == SEQ2SEQ:
            metrics = _seq2seq(split, outputs)
        else:
            metrics = _multiple_choice(split, outputs)
    return {k: None if v is None or not math.isfinite(v) else float(v) for k, v in metrics.items()}


def _cross_entropy(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Per-row `-log softmax(logits)[label]`: `logits [n, classes]`, `labels [n]`."""
    from scipy.special import log_softmax

    logp = log_softmax(np.asarray(logits, np.float64), axis=-1)
    return -np.take_along_axis(logp, np.asarray(labels)[:, None], axis=-1)[:, 0]


def _classification(labels: np.ndarray, predictions: np.ndarray, num_labels: int) -> dict[str, float]:
    from sklearn import metrics

    return {"accuracy": metrics.accuracy_score(labels, predictions),
            "f1": metrics.f1_score(labels, predictions, average="macro", labels=list(range(num_labels)),
                                   zero_division=0),
            "matthews": metrics.matthews_corrcoef(labels, predictions)}


def _sequence_classification(split, outputs, spec):
    from scipy import stats
    from scipy.special import log_expit
    from sklearn import metrics

    logits = np.stack([o["logits"] for o in outputs]).astype(np.float64)
    references = np.stack(split.references)
    if spec.problem_type == "regression":
        predictions = logits.reshape(len(logits), -1)[:, 0]
        return {"loss": metrics.mean_squared_error(references, predictions),
                "mse": metrics.mean_squared_error(references, predictions),
                "pearson": stats.pearsonr(references, predictions)[0],
                "spearman": stats.spearmanr(references, predictions)[0]}
    if spec.problem_type == "multi_label_classification":
        bce = -(references * log_expit(logits) + (1 - references) * log_expit(-logits))
        predicted = (logits > 0).astype(int)
        return {"loss": bce.mean(), "accuracy": metrics.accuracy_score(references.astype(int), predicted),
                "f1": metrics.f1_score(references.astype(int), predicted, average="macro", zero_division=0)}
    return {"loss": _cross_entropy(logits, references).mean(),
            **_classification(references, logits.argmax(-1), spec.num_labels)}


def _token_classification(split, outputs):
    import seqeval.metrics

    names = split.label_names
    losses, true_tags, predicted_tags, word_hits = [], [], [], []
    for feature, output, words, reference in zip(split.features, outputs, split.word_ids, split.references):
        labels = feature["labels"]
        labelled = labels != IGNORE_INDEX
        losses.append(_cross_entropy(output["logits"][labelled], labels[labelled]))
        # Words cut off by the length limit have no prediction: they count as "O" (outside any entity).
        predicted = ["O"] * len(reference)
        for position in np.flatnonzero(words >= 0):
            predicted[words[position]] = names[int(output["logits"][position].argmax())]
        true_tags.append(list(reference))
        predicted_tags.append(predicted)
        word_hits += [t == p for t, p in zip(reference, predicted)]
    return {"loss": np.concatenate(losses).mean(), "accuracy": np.mean(word_hits),
            "entity_f1": seqeval.metrics.f1_score(true_tags, predicted_tags, zero_division=0),
            "entity_precision": seqeval.metrics.precision_score(true_tags, predicted_tags, zero_division=0),
            "entity_recall": seqeval.metrics.recall_score(true_tags, predicted_tags, zero_division=0)}


def _multiple_choice(split, outputs):
    from sklearn import metrics

    logits = np.stack([o["logits"] for o in outputs]).astype(np.float64)
    references = np.asarray(split.references)
    return {"loss": _cross_entropy(logits, references).mean(),
            "accuracy": metrics.accuracy_score(references, logits.argmax(-1))}


def _seq2seq(split, outputs):
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"])
    scores = [scorer.score(str(target), str(o["prediction"])) for target, o in zip(split.references, outputs)]
    tokens = sum(int(o["target_tokens"]) for o in outputs)
    return {"loss": sum(float(o["target_nll"]) for o in outputs) / max(tokens, 1),
            **{name: 100.0 * np.mean([s[name].fmeasure for s in scores]) for name in ("rougeL", "rouge1", "rouge2")},
            "exact_match": 100.0 * np.mean([" ".join(str(o["prediction"]).split()) == " ".join(str(t).split())
                                            for t, o in zip(split.references, outputs)])}


# --------------------------------------------------------------------------------------------------------------
# Extractive QA
# --------------------------------------------------------------------------------------------------------------
def _question_answering(split, outputs, spec):
    losses = [(_cross_entropy(o["start_logits"][None], f["start_positions"][None]) +
               _cross_entropy(o["end_logits"][None], f["end_positions"][None]))[0] / 2
              for f, o in zip(split.features, outputs)]
    predictions = predict_answers(split, outputs, max_answer_tokens=spec.max_answer_tokens)
    exact = [max(exact_match(p, g) for g in (golds or [""])) for p, golds in zip(predictions, split.references)]
    overlap = [max(squad_f1(p, g) for g in (golds or [""])) for p, golds in zip(predictions, split.references)]
    return {"loss": np.mean(losses), "exact_match": 100.0 * np.mean(exact), "f1": 100.0 * np.mean(overlap)}


def predict_answers(split: TaskSplit, outputs, *, max_answer_tokens: int, n_best: int = 20) -> list[str]:
    """The answer text of each row: the best-scoring span (start + end logit) over its windows, a span being a
    start no later than its end, at most `max_answer_tokens` long, inside the context, starting in the window
    where its first token has the most context. When the split has unanswerable rows (SQuAD 2.0), a row whose
    best "no answer" score (both logits on the first token) beats its best span is answered "".
    """
    best: dict[int, tuple[float, str]] = {}
    null: dict[int, float] = {}
    for row, output, offsets, max_context in zip(split.feature_rows, outputs, split.offsets, split.max_context):
        start_logits, end_logits = output["start_logits"], output["end_logits"]
        row = int(row)
        null[row] = min(null.get(row, math.inf), float(start_logits[0] + end_logits[0]))
        starts = np.argsort(start_logits)[::-1][:n_best]
        ends = np.argsort(end_logits)[::-1][:n_best]
        for s in starts:
            if offsets[s, 0] < 0 or not max_context[s]:
                continue
            for e in ends:
                if e < s or e - s + 1 > max_answer_tokens or offsets[e, 0] < 0:
                    continue
                value = float(start_logits[s] + end_logits[e])
                if row not in best or value > best[row][0]:
                    best[row] = (value, split.contexts[row][offsets[s, 0]:offsets[e, 1]])
    unanswerable = any(not golds for golds in split.references)
    answers = []
    for row in range(len(split.rows)):
        value, text = best.get(row, (-math.inf, ""))
        answers.append("" if unanswerable and null.get(row, -math.inf) > value else text)
    return answers


def squad_normalize(text: str) -> str:
    """SQuAD's answer normalisation: lowercase, punctuation removed, articles (a, an, the) removed, whitespace
    collapsed to single spaces."""
    text = "".join(c for c in text.lower() if c not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def exact_match(prediction: str, gold: str) -> float:
    return float(squad_normalize(prediction) == squad_normalize(gold))


def squad_f1(prediction: str, gold: str) -> float:
    """Harmonic mean of token precision and recall between the normalised answers; an empty gold answer (no
    answer) matches only an empty prediction."""
    predicted, true = squad_normalize(prediction).split(), squad_normalize(gold).split()
    if not predicted or not true:
        return float(predicted == true)
    common = sum((collections.Counter(predicted) & collections.Counter(true)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(predicted), common / len(true)
    return 2 * precision * recall / (precision + recall)
