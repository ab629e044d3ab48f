"""Labelled rows -> token features of a task head: what `train/data/task_batches.py` pads and batches.

    spec = TaskSpec(kind="token_classification", fields={"tokens": "words", "tags": "ner"}, ...)
    train = build_split(read_task_rows(spec, spec.train_file, "data.train_file"), spec, tokenizer)
    held_out = build_split(read_task_rows(spec, spec.eval_file, "data.eval_file"), spec, tokenizer,
                           label_names=train.label_names)

A feature is a dict of unpadded numpy arrays: `input_ids`, `attention_mask` and (for models that take them)
`token_type_ids`, `[length]` (`[choices, length]` for multiple choice), plus the labels of the kind:

- sequence classification: `text` (and `text_pair`) laid out by the tokenizer's template, cut longest-first to
  `max_length`; `labels` a class id, a float (regression) or `[num_labels]` 0/1 floats (multi-label);
- token classification: `tokens` (words) and `tags` (one per word); each word is tokenized alone, its first
  sub-token carries the tag and its continuations -100, or the tag too with `label_all_tokens` (a `B-X`
  continuation then gets `I-X`, when the tag set has it); special tokens -100. Words past `max_length` are cut
  (counted in `notes`; they are predicted `O` in evaluation);
- extractive QA: `question` + `context` in windows of `max_length` tokens whose context parts start
  `doc_stride` tokens apart; `start_positions` / `end_positions` the answer's first and last token in the window,
  or 0 (the first token, `[CLS]`) when the window does not hold the whole answer or the row has none. Each token
  of the context maps back to the characters of its word (`offsets`), so an answer predicted in tokens is a span
  of the original text;
- multiple choice: `[text, choice]` pairs, one per choice, each cut longest-first to `max_length`; `labels` the
  index of the right choice;
- sequence to sequence (`*ForConditionalGeneration`): `source` laid out by the template and cut to `max_length`
  (the encoder's input); `labels` the `target` laid out the same way and cut to `max_target_length` (the decoder
  reads them shifted right behind its start token, as HF's seq2seq models do). The template's last token (`[SEP]`,
  `</s>`) ends every target: it must be the model's `eos_token_id`, where generation stops.

Rows are checked as they are converted: a label outside the label set, tags not one per word, an answer not at
its `answer_start` or not in its context, a choice count unlike the first row's: each a `ValueError` naming the
file, line and field. Rows without an answer are no error (SQuAD 2.0 has them): they are counted in `notes`.
"""

from __future__ import annotations

import bisect
import dataclasses
import json
import re
from typing import Any, Mapping, Sequence

import numpy as np

from train.data.labelled import Row, csv_number, read_rows

IGNORE_INDEX = -100
SEQUENCE_CLASSIFICATION = "sequence_classification"
TOKEN_CLASSIFICATION = "token_classification"
QUESTION_ANSWERING = "question_answering"
MULTIPLE_CHOICE = "multiple_choice"
SEQ2SEQ = "seq2seq"
# The roles of each kind (keys of `config.data.schema`); `text_pair` is optional ("" = single texts).
ROLES = {
    SEQUENCE_CLASSIFICATION: ("text", "text_pair", "label"),
    TOKEN_CLASSIFICATION: ("tokens", "tags"),
    QUESTION_ANSWERING: ("question", "context", "answers"),
    MULTIPLE_CHOICE: ("text", "choices", "label"),
    SEQ2SEQ: ("source", "target"),
}
OPTIONAL_ROLES = ("text_pair",)
PROBLEM_TYPES = ("single_label_classification", "multi_label_classification", "regression")


@dataclasses.dataclass(frozen=True)
class TaskSpec:
    """The data side of a fine-tuning run, resolved from the config by `train.experiment`.

    Attributes:
      kind: one of `ROLES`' keys (from the head's class name).
      train_file, eval_file: `.jsonl` / `.csv` paths (`eval_file` "" = none).
      fields: role -> field name in the files, for the roles of `kind` (an absent optional role is left out).
      labels: ordered class / tag names (`config.data.labels`); () = the sorted distinct values of the train file.
      num_labels: the head's `num_labels`.
      problem_type: sequence classification's loss ("single_label_classification", "multi_label_classification",
        "regression"); "" for the other kinds.
      max_length: tokens per row (per choice), `config.seq_len`.
      buckets: ascending padded lengths, the last `max_length`.
      label_all_tokens, doc_stride, max_query_tokens, max_answer_tokens, max_target_length, num_beams: the
        `config.data` options of those names.
      token_type_ids: whether the model takes token types (features carry them only then).
    """

    kind: str
    train_file: str
    eval_file: str
    fields: Mapping[str, str]
    labels: tuple = ()
    num_labels: int = 2
    problem_type: str = ""
    max_length: int = 128
    buckets: tuple = (128,)
    label_all_tokens: bool = False
    doc_stride: int = 64
    max_query_tokens: int = 64
    max_answer_tokens: int = 30
    max_target_length: int = 64
    num_beams: int = 4
    token_type_ids: bool = True


@dataclasses.dataclass
class TaskSplit:
    """The features of one file, and what evaluation needs to score predictions against its rows.

    Attributes:
      rows: the rows read (each knows its file and line).
      features: one dict of unpadded arrays per model row (see the module docstring); QA rows give one feature
        per window, the other kinds one per row.
      feature_rows: `[num_features]` the row each feature came from.
      references: per row, what a prediction is scored against: a class id, a float, `[num_labels]` 0/1, the tag
        names of its words, the answer texts ([] for none), the right choice.
      label_names: class / tag names in id order (None for regression and for int labels without names).
      word_ids: token classification, per feature: `[length]` the word whose tag each position predicts (its
        first sub-token), -1 elsewhere.
      offsets: QA, per feature: `[length, 2]` the characters `[start, end)` of the context word of each position,
        -1 outside the context.
      max_context: QA, per feature: `[length]` whether this window is the one where the token has the most
        context on both sides (answers start only there, as in the original BERT).
      contexts: QA, the context of each row.
      notes: counted warnings (cut rows, rows without an answer), for the run's log.
    """

    rows: list
    features: list
    feature_rows: np.ndarray
    references: list
    label_names: tuple | None
    word_ids: list | None = None
    offsets: list | None = None
    max_context: list | None = None
    contexts: list | None = None
    notes: list = dataclasses.field(default_factory=list)


def read_task_rows(spec: TaskSpec, path: str, key: str) -> list[Row]:
    """The rows of `path` with the fields of `spec.kind` (CSV cells of list roles read as JSON)."""
    return read_rows(path, list(spec.fields.values()), key=key,
                     json_cells={field: role for role, field in spec.fields.items()})


# --------------------------------------------------------------------------------------------------------------
# Labels
# --------------------------------------------------------------------------------------------------------------
def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def label_names_of(rows: Sequence[Row], spec: TaskSpec) -> tuple | None:
    """The ordered label names: `spec.labels`, else the sorted distinct string labels (tags) of `rows`, else None
    for integer labels (ids themselves). Their number must be the head's `num_labels`."""
    if spec.kind in (MULTIPLE_CHOICE, QUESTION_ANSWERING, SEQ2SEQ) or spec.problem_type == "regression":
        return None
    role = "tags" if spec.kind == TOKEN_CLASSIFICATION else "label"
    field = spec.fields[role]
    if spec.labels:
        names = tuple(str(n) for n in spec.labels)
        where = f"config.data.labels={names!r}"
    else:
        values, kinds = [], set()
        for row in rows:
            for value in _label_values(row, field, role, spec):
                kinds.add("int" if _is_int(value) else "str")
                if len(kinds) > 1:
                    row.fail(field, f"{value!r} mixes integer ids and names among the labels (use one kind, or "
                                    "name the classes in config.data.labels)")
                values.append(value)
        if kinds == {"int"}:
            if spec.kind == TOKEN_CLASSIFICATION:
                raise ValueError(f"config.data.labels: the tags of {rows[0].file} are ids; name them (in id order, "
                                 "as 'B-PER', 'I-PER', 'O', ...) so entities can be read for evaluation")
            return None
        names = tuple(sorted(set(values)))
        where = f"the labels of {rows[0].file} ({', '.join(map(repr, names))})"
    if len(names) != spec.num_labels:
        raise ValueError(f"config.model.num_labels={spec.num_labels}: {where} are {len(names)} classes; set "
                         f"config.model.num_labels={len(names)}")
    if len(set(names)) != len(names):
        raise ValueError(f"config.data.labels={names!r}: a name is given twice")
    return names


def _label_values(row: Row, field: str, role: str, spec: TaskSpec) -> list:
    """The label values of a row: its tags, its label, or the classes of a multi-label row."""
    value = row.values[field]
    if role == "tags" or spec.problem_type == "multi_label_classification":
        if isinstance(value, str) and value.lstrip().startswith("["):  # a CSV cell holding a JSON list
            try:
                value = json.loads(value)
            except json.JSONDecodeError as error:
                row.fail(field, f"a list of labels in a CSV cell is JSON (e.g. [\"a\", \"b\"]); {error.msg}")
        if not isinstance(value, list):
            row.fail(field, f"expected a list of {'tags' if role == 'tags' else 'labels'}, got {value!r}")
        return [csv_number(v) for v in value]
    return [csv_number(value)]


def _class_id(row: Row, field: str, value: Any, names: tuple | None, num_labels: int) -> int:
    """A label value -> its class id, or `row.fail` naming the field and the allowed values."""
    value = csv_number(value)
    if _is_int(value):
        count = num_labels if names is None else len(names)
        if not 0 <= value < count:
            row.fail(field, f"label {value} is out of range [0, {count})" +
                     (f" (classes: {', '.join(map(repr, names))})" if names else " (config.model.num_labels)"))
        return int(value)
    if isinstance(value, str) and names is not None and value in names:
        return names.index(value)
    if isinstance(value, str) and names is not None:
        row.fail(field, f"label {value!r} is not one of the classes {', '.join(map(repr, names))}" +
                 (" (config.data.labels)" if names else ""))
    row.fail(field, f"expected a class id (int) {'or a class name ' if names else ''}got {value!r}")


# --------------------------------------------------------------------------------------------------------------
# Tokenization helpers
# --------------------------------------------------------------------------------------------------------------
def text_of(row: Row, field: str) -> str:
    """The string value of `field`, or `row.fail`."""
    value = row.values[field]
    if not isinstance(value, str):
        row.fail(field, f"expected a string, got {type(value).__name__} {value!r}")
    return value


def strings_of(row: Row, field: str, what: str) -> list[str]:
    """The non-empty list of strings of `field` (`what` they are, for the message), or `row.fail`."""
    value = row.values[field]
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        row.fail(field, f"expected a non-empty list of strings ({what}), got {value!r}")
    return value


def pieces_of_words(tokenizer, words: Sequence[str]) -> list[list[int]]:
    """Ids of each word tokenized alone, spaced as in running text.

    Tokenizers differ in how a word after a space is written: SentencePiece and WordPiece give it the same tokens
    alone (`▁word`, `word`), byte-level BPE needs the space (`Ġword`), unless it adds a space before every text
    itself. A probe picks the way that reproduces a two-word text's tokens, so no family is named here.
    """
    if not words:
        return []
    spaced = _word_spacing(tokenizer)
    texts = [w if (i == 0 or not spaced) else " " + w for i, w in enumerate(words)]
    return tokenizer(list(texts), add_special_tokens=False, return_attention_mask=False,
                     return_token_type_ids=False)["input_ids"]


def _word_spacing(tokenizer) -> bool:
    cached = getattr(tokenizer, "_task_word_spacing", None)
    if cached is None:
        together = tokenizer.tokenize("hello world")
        cached = together != tokenizer.tokenize("hello") + tokenizer.tokenize("world") and \
            together == tokenizer.tokenize("hello") + tokenizer.tokenize(" world")
        tokenizer._task_word_spacing = cached
    return cached


def _position_of(tokenizer, which: str, len_a: int, len_b: int | None) -> int:
    """Where sequence `which` ("A" or "B") starts in the template's layout of one sequence (`len_b` None) or a
    pair: `[CLS] A [SEP] B [SEP]` puts A at 1 and B at `len_a + 2`."""
    position = 0
    for item, _ in tokenizer.template.parts(pair=len_b is not None):
        if item == which:
            return position
        position += len_a if item == "A" else len_b if item == "B" else 1
    raise AssertionError(f"the template holds {which}")


def _feature(spec: TaskSpec, ids: Sequence[int], type_ids: Sequence[int], **labels) -> dict[str, np.ndarray]:
    feature = {"input_ids": np.asarray(ids, np.int32), "attention_mask": np.ones(len(ids), np.int32)}
    if spec.token_type_ids:
        feature["token_type_ids"] = np.asarray(type_ids, np.int32)
    feature.update({k: np.asarray(v) for k, v in labels.items()})
    return feature


# --------------------------------------------------------------------------------------------------------------
# Kinds
# --------------------------------------------------------------------------------------------------------------
def build_split(rows: Sequence[Row], spec: TaskSpec, tokenizer, *, label_names: tuple | None = None,
                is_train: bool = True) -> TaskSplit:
    """The features of `rows` for `spec.kind` (see the module docstring).

    `label_names`: the train split's (for an eval split); None derives them from `rows` (`label_names_of`).
    """
    rows = list(rows)
    if is_train:
        label_names = label_names_of(rows, spec)
    build = {SEQUENCE_CLASSIFICATION: _sequence_classification, TOKEN_CLASSIFICATION: _token_classification,
             QUESTION_ANSWERING: _question_answering, MULTIPLE_CHOICE: _multiple_choice, SEQ2SEQ: _seq2seq}[spec.kind]
    split = build(rows, spec, tokenizer, label_names)
    split.label_names = label_names
    return split


def _sequence_label(row: Row, spec: TaskSpec, names: tuple | None):
    field = spec.fields["label"]
    value = row.values[field]
    if spec.problem_type == "regression":
        number = csv_number(value)
        if isinstance(number, bool) or not isinstance(number, (int, float)) or not np.isfinite(number):
            row.fail(field, f"expected a finite number (regression), got {value!r}")
        return np.float32(number)
    if spec.problem_type == "multi_label_classification":
        target = np.zeros(spec.num_labels, np.float32)
        for v in _label_values(row, field, "label", spec):
            target[_class_id(row, field, v, names, spec.num_labels)] = 1.0
        return target
    return np.int32(_class_id(row, field, value, names, spec.num_labels))


def _sequence_classification(rows, spec, tokenizer, names):
    first = [text_of(r, spec.fields["text"]) for r in rows]
    pair_field = spec.fields.get("text_pair")
    second = [text_of(r, pair_field) for r in rows] if pair_field else None
    full = tokenizer(first, second, return_token_type_ids=True, return_attention_mask=False)
    cut = tokenizer(first, second, truncation="longest_first", max_length=spec.max_length,
                    return_token_type_ids=True, return_attention_mask=False)
    features, references = [], []
    for i, row in enumerate(rows):
        label = _sequence_label(row, spec, names)
        references.append(label)
        features.append(_feature(spec, cut["input_ids"][i], cut["token_type_ids"][i], labels=label))
    notes = _cut_note(rows, sum(len(a) > len(b) for a, b in zip(full["input_ids"], cut["input_ids"])), spec)
    return TaskSplit(rows, features, np.arange(len(rows)), references, names, notes=notes)


def _cut_note(rows, count: int, spec: TaskSpec, what: str = "rows were cut") -> list[str]:
    if not count:
        return []
    return [f"{rows[0].file}: {count} of {len(rows)} {what} to config.seq_len={spec.max_length} tokens"]


def _continuation_tag(tag: int, names: tuple | None) -> int:
    """`B-X` -> `I-X` (when the tag set has it) for the continuation sub-tokens of a labelled word."""
    if names is None or not names[tag].startswith("B-"):
        return tag
    inside = "I-" + names[tag][2:]
    return names.index(inside) if inside in names else tag


def _token_classification(rows, spec, tokenizer, names):
    words_field, tags_field = spec.fields["tokens"], spec.fields["tags"]
    room = spec.max_length - tokenizer.num_special_tokens_to_add(pair=False)
    features, references, word_ids, cut = [], [], [], 0
    for row in rows:
        words = strings_of(row, words_field, "words")
        tags = row.values[tags_field]
        if not isinstance(tags, list) or len(tags) != len(words):
            row.fail(tags_field, f"expected one tag per word ({len(words)} words in {words_field!r}), got {tags!r}")
        tag_ids = [_class_id(row, tags_field, t, names, spec.num_labels) for t in tags]
        references.append([names[t] for t in tag_ids])
        ids, labels, owners = [], [], []
        for w, pieces in enumerate(pieces_of_words(tokenizer, words)):
            fits = len(ids) + len(pieces) <= room
            if not fits:
                cut += 1
                if ids:
                    break
                pieces = pieces[:room]  # a first word longer than the row keeps its first pieces: a labelled token
            for p, piece in enumerate(pieces):
                ids.append(piece)
                first = p == 0
                labels.append(tag_ids[w] if first else
                              _continuation_tag(tag_ids[w], names) if spec.label_all_tokens else IGNORE_INDEX)
                owners.append(w if first else -1)
            if not fits:
                break
        input_ids = tokenizer.build_inputs_with_special_tokens(ids)
        start = _position_of(tokenizer, "A", len(ids), None)
        # The template's special tokens take no label; the word ids mark what evaluation reads.
        full_labels = [IGNORE_INDEX] * len(input_ids)
        full_owners = [-1] * len(input_ids)
        full_labels[start:start + len(ids)] = labels
        full_owners[start:start + len(ids)] = owners
        features.append(_feature(spec, input_ids, tokenizer.create_token_type_ids_from_sequences(ids),
                                 labels=np.asarray(full_labels, np.int32)))
        word_ids.append(np.asarray(full_owners, np.int32))
    return TaskSplit(rows, features, np.arange(len(rows)), references, names, word_ids=word_ids,
                     notes=_cut_note(rows, cut, spec))


def _answers(row: Row, field: str, context: str) -> list[tuple[str, int]]:
    """`[(text, start)]` of a row's answers, each checked to stand at `start` in the context (or found there).

    Accepted: `{"text": [...], "answer_start": [...]}` (SQuAD as HF datasets store it), a list of
    `{"text", "answer_start"}` objects (SQuAD's JSON), a list of strings or one string (found in the context).
    """
    value = row.values[field]
    if isinstance(value, dict):
        texts, starts = value.get("text"), value.get("answer_start", [None] * len(value.get("text") or []))
        if not isinstance(texts, list) or not isinstance(starts, list) or len(texts) != len(starts):
            row.fail(field, f"expected {{'text': [...], 'answer_start': [...]}} of equal lengths, got {value!r}")
        items = list(zip(texts, starts))
    elif isinstance(value, str):
        items = [(value, None)]
    elif isinstance(value, list):
        items = []
        for item in value:
            if isinstance(item, dict) and "text" in item:
                items.append((item["text"], item.get("answer_start")))
            elif isinstance(item, str):
                items.append((item, None))
            else:
                row.fail(field, f"an answer is a string or {{'text', 'answer_start'}}, got {item!r}")
    else:
        row.fail(field, f"expected answers (a list, or {{'text': [...], 'answer_start': [...]}}), got {value!r}")
    answers = []
    for n, (text, start) in enumerate(items):
        if not isinstance(text, str) or not text.strip():
            row.fail(field, f"answer {n}: expected a non-empty string, got {text!r}")
        if start is None:
            start = context.find(text)
            if start < 0:
                row.fail(field, f"answer {n} {text!r} is not in the context")
        elif not _is_int(start) or not 0 <= start <= len(context) - len(text):
            row.fail(field, f"answer {n}: answer_start={start!r} is outside the context ({len(context)} characters)")
        elif context[start:start + len(text)] != text:
            row.fail(field, f"answer {n} {text!r} is not at answer_start={start} of the context (there: "
                            f"{context[start:start + len(text)]!r})")
        answers.append((text, int(start)))
    return answers


def _words_with_spans(text: str) -> tuple[list[str], list[tuple[int, int]]]:
    """Whitespace-separated words of `text` and their `[start, end)` characters."""
    matches = list(re.finditer(r"\S+", text))
    return [m.group() for m in matches], [m.span() for m in matches]


def _question_answering(rows, spec, tokenizer, names):
    q_field, c_field, a_field = spec.fields["question"], spec.fields["context"], spec.fields["answers"]
    specials = tokenizer.num_special_tokens_to_add(pair=True)
    features, feature_rows, references, offsets, max_context, contexts = [], [], [], [], [], []
    unanswerable = 0
    for index, row in enumerate(rows):
        question, context = text_of(row, q_field), text_of(row, c_field)
        answers = _answers(row, a_field, context)
        references.append([text for text, _ in answers])
        contexts.append(context)
        unanswerable += not answers
        query = pieces_of_words(tokenizer, _words_with_spans(question)[0])
        query = [t for word in query for t in word][:spec.max_query_tokens]
        words, spans = _words_with_spans(context)
        if not words:
            row.fail(c_field, "the context holds no words")
        tokens, token_word = [], []
        for w, pieces in enumerate(pieces_of_words(tokenizer, words)):
            tokens += pieces
            token_word += [w] * len(pieces)
        room = spec.max_length - len(query) - specials
        if room < 1:
            raise ValueError(f"config.seq_len={spec.max_length}: leaves no room for the context after a question of "
                             f"{len(query)} tokens and {specials} special tokens ({row.where(q_field)}); raise it or "
                             "lower config.data.max_query_tokens")
        target = None
        if answers:  # training targets the first answer, as SQuAD's training set has one
            target = _answer_tokens(answers[0], spans, token_word)
        # A stride longer than the window would skip tokens between windows (the original BERT's rule too).
        windows = list(range(0, max(len(tokens) - room, 0) + 1, min(spec.doc_stride, room)))
        if windows[-1] + room < len(tokens):
            windows.append(len(tokens) - room)  # the stride does not land on the end: one more window for the tail
        for begin in windows:
            part = tokens[begin:begin + room]
            ids = tokenizer.build_inputs_with_special_tokens(query, part)
            offset = _position_of(tokenizer, "B", len(query), len(part))
            start_pos = end_pos = 0
            if target is not None and begin <= target[0] and target[1] < begin + len(part):
                start_pos, end_pos = offset + target[0] - begin, offset + target[1] - begin
            features.append(_feature(spec, ids, tokenizer.create_token_type_ids_from_sequences(query, part),
                                     start_positions=np.int32(start_pos), end_positions=np.int32(end_pos)))
            feature_rows.append(index)
            where = np.full((len(ids), 2), -1, np.int32)
            best = np.zeros(len(ids), bool)
            for j in range(len(part)):
                where[offset + j] = spans[token_word[begin + j]]
                best[offset + j] = _is_max_context(windows, room, len(tokens), begin, begin + j)
            offsets.append(where)
            max_context.append(best)
    notes = [f"{rows[0].file}: {unanswerable} of {len(rows)} rows have no answer (trained to point at the first "
             "token; scored as SQuAD 2.0 unanswerable questions)"] if unanswerable else []
    return TaskSplit(rows, features, np.asarray(feature_rows, np.int64), references, names, offsets=offsets,
                     max_context=max_context, contexts=contexts, notes=notes)


def _answer_tokens(answer: tuple[str, int], spans: Sequence[tuple[int, int]],
                   token_word: Sequence[int]) -> tuple[int, int] | None:
    """The first and last context token of the words the answer's characters fall in (whole words: a token
    maps back to its word, so a predicted span is always a run of words of the context)."""
    text, start = answer
    begin = start + len(text) - len(text.lstrip())
    end = start + len(text.rstrip())
    starts = [s for s, _ in spans]
    first_word = max(bisect.bisect_right(starts, begin) - 1, 0)
    last_word = max(bisect.bisect_left(starts, end) - 1, first_word)
    tokens = [t for t, w in enumerate(token_word) if first_word <= w <= last_word]
    return (tokens[0], tokens[-1]) if tokens else None  # None: the words tokenize to nothing


def _is_max_context(windows: Sequence[int], room: int, total: int, begin: int, position: int) -> bool:
    """Whether the window starting at `begin` gives context token `position` the most context: the larger
    `min(tokens left, tokens right)` (plus a little for longer windows), the original BERT rule."""
    best_score, best_begin = None, None
    for other in windows:
        end = min(other + room, total) - 1
        if not other <= position <= end:
            continue
        score = min(position - other, end - position) + 0.01 * (end - other + 1)
        if best_score is None or score > best_score:
            best_score, best_begin = score, other
    return best_begin == begin


def _multiple_choice(rows, spec, tokenizer, names):
    text_field, choices_field, label_field = spec.fields["text"], spec.fields["choices"], spec.fields["label"]
    count = None
    firsts, seconds = [], []
    for row in rows:
        choices = strings_of(row, choices_field, "choices")
        if count is None:
            count, first_row = len(choices), row
        elif len(choices) != count:
            row.fail(choices_field, f"{len(choices)} choices; every row needs {count}, as {first_row.where()} has "
                                    "(the model reads [batch, choices, length])")
        firsts += [text_of(row, text_field)] * count
        seconds += choices
    full = tokenizer(firsts, seconds, return_token_type_ids=True, return_attention_mask=False)
    cut = tokenizer(firsts, seconds, truncation="longest_first", max_length=spec.max_length,
                    return_token_type_ids=True, return_attention_mask=False)
    features, references = [], []
    for i, row in enumerate(rows):
        value = csv_number(row.values[label_field])
        choices = row.values[choices_field]
        if isinstance(value, str) and value in choices:
            value = choices.index(value)  # the right choice given by its text
        label = _class_id(row, label_field, value, None, count)
        references.append(label)
        ids = cut["input_ids"][i * count:(i + 1) * count]
        types = cut["token_type_ids"][i * count:(i + 1) * count]
        feature = {"input_ids": _stack_padded(ids, _pad_id(tokenizer)),
                   "attention_mask": _stack_padded([[1] * len(r) for r in ids], 0)}
        if spec.token_type_ids:
            feature["token_type_ids"] = _stack_padded(types, 0)
        feature["labels"] = np.int32(label)
        features.append(feature)
    cut_rows = sum(len(a) > len(b) for a, b in zip(full["input_ids"], cut["input_ids"]))
    return TaskSplit(rows, features, np.arange(len(rows)), references, names,
                     notes=_cut_note(rows, cut_rows, spec, "choices were cut"))


def _stack_padded(rows: Sequence[Sequence[int]], value: int) -> np.ndarray:
    """`[len(rows), longest]` int32, each row padded with `value` (the choices of one example)."""
    out = np.full((len(rows), max(len(r) for r in rows)), value, np.int32)
    for i, r in enumerate(rows):
        out[i, :len(r)] = r
    return out


def _pad_id(tokenizer) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0


def _seq2seq(rows, spec, tokenizer, names):
    sources = [text_of(r, spec.fields["source"]) for r in rows]
    targets = [text_of(r, spec.fields["target"]) for r in rows]
    for row, target in zip(rows, targets):
        if not target.strip():
            row.fail(spec.fields["target"], "the target is empty (a model learns nothing from it)")
    full = tokenizer(sources, return_token_type_ids=True, return_attention_mask=False)["input_ids"]
    cut = tokenizer(sources, truncation=True, max_length=spec.max_length, return_token_type_ids=True,
                    return_attention_mask=False)
    whole = tokenizer(targets, return_attention_mask=False, return_token_type_ids=False)["input_ids"]
    labels = tokenizer(targets, truncation=True, max_length=spec.max_target_length, return_attention_mask=False,
                       return_token_type_ids=False)["input_ids"]
    features = [_feature(spec, ids, types, labels=np.asarray(y, np.int32))
                for ids, types, y in zip(cut["input_ids"], cut["token_type_ids"], labels)]
    notes = _cut_note(rows, sum(len(a) > len(b) for a, b in zip(full, cut["input_ids"])), spec, "sources were cut")
    long_targets = sum(len(a) > len(b) for a, b in zip(whole, labels))
    if long_targets:
        notes.append(f"{rows[0].file}: {long_targets} of {len(rows)} targets were cut to "
                     f"config.data.max_target_length={spec.max_target_length} tokens")
    return TaskSplit(rows, features, np.arange(len(rows)), list(targets), names, notes=notes)


def end_token_id(tokenizer) -> int | None:
    """The id the tokenizer's template ends a text with (`[SEP]`, `</s>`), or None when it adds nothing."""
    ids = tokenizer.build_inputs_with_special_tokens([])
    return int(ids[-1]) if ids else None
