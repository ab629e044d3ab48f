"""Fine-tuning data without a model: labelled files (JSONL / CSV) -> token features of each head kind -> bucketed,
resumable batches; the metrics; the batch shardings of other ranks. Nothing here compiles a model."""

from __future__ import annotations

import dataclasses
import json
import os

import jax
import numpy as np
import pytest

from tests.train import synthetic_tasks
from train import partitioning, task_metrics
from train.data import SAMPLES, sources, task_batches, task_features
from train.data import tokenizer as tokenizers
from train.data.task_features import IGNORE_INDEX, TaskSpec


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    """A SentencePiece tokenizer trained on the sample files' words, small enough that words split into pieces."""
    texts = []
    for name in synthetic_tasks.SAMPLES:
        for row in synthetic_tasks.rows_of(name):
            texts += [v if isinstance(v, str) else " ".join(v) for v in row.values() if isinstance(v, (str, list))]
    source = sources.TextSource(name="finetune_data_test/samples:1.0.0", split="train", text_key="text",
                                data_dir=None, records=[{"text": t} for t in texts])
    path = tokenizers.build_tokenizer(source, vocab_size=120, cache_dir=str(tmp_path_factory.mktemp("spm")))
    return tokenizers.task_tokenizer(path)


def _write(path, rows) -> str:
    with open(path, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    return str(path)


def _spec(kind, train_file, **changes) -> TaskSpec:
    fields = {role: role for role in task_features.ROLES[kind] if role not in task_features.OPTIONAL_ROLES}
    defaults = dict(kind=kind, train_file=str(train_file), eval_file="", fields=fields, max_length=32, buckets=(32,),
                    problem_type="single_label_classification" if kind == "sequence_classification" else "")
    return TaskSpec(**{**defaults, **changes})


def _split(spec, tokenizer, **kwargs):
    return task_features.build_split(task_features.read_task_rows(spec, spec.train_file, "data.train_file"), spec,
                                     tokenizer, **kwargs)


def test_shipped_samples_are_the_generator_output():
    for name in synthetic_tasks.SAMPLES:
        with open(os.path.join(SAMPLES, name)) as f:
            assert [json.loads(line) for line in f] == synthetic_tasks.rows_of(name), name


def test_csv_reads_like_jsonl(tmp_path, tokenizer):
    rows = [{"sentence": "the film was excellent", "other": "it was", "label": 1},
            {"sentence": "boring, \"long\" film", "other": "quite", "label": 0}]
    jsonl = _write(tmp_path / "a.jsonl", rows)
    with open(tmp_path / "a.csv", "w") as f:
        f.write('sentence,other,label\n"the film was excellent",it was,1\n"boring, ""long"" film",quite,0\n')
    fields = {"text": "sentence", "text_pair": "other", "label": "label"}
    a = _split(_spec("sequence_classification", jsonl, fields=fields), tokenizer)
    b = _split(_spec("sequence_classification", tmp_path / "a.csv", fields=fields), tokenizer)
    assert [r.line for r in b.rows] == [2, 3] and [r.line for r in a.rows] == [1, 2]
    for x, y in zip(a.features, b.features):
        assert x.keys() == y.keys() and all(np.array_equal(x[k], y[k]) for k in x)
    # [CLS] A [SEP] B [SEP], B's part (and its [SEP]) of token type 1.
    ids, types = a.features[0]["input_ids"], a.features[0]["token_type_ids"]
    first = tokenizer(rows[0]["sentence"], add_special_tokens=False)["input_ids"]
    assert ids[0] == tokenizer.cls_token_id and list(ids[1:1 + len(first)]) == first
    assert ids[1 + len(first)] == tokenizer.sep_token_id and ids[-1] == tokenizer.sep_token_id
    assert set(types[:2 + len(first)]) == {0} and set(types[2 + len(first):]) == {1}
    assert a.label_names is None and a.references == [1, 0]


@pytest.mark.parametrize("problem,labels,references,names", [
    ("single_label_classification", ["pos", "neg", "pos"], [1, 0, 1], ("neg", "pos")),
    ("regression", [0.5, 2, -1.0], [0.5, 2.0, -1.0], None),
    ("multi_label_classification", [["a"], ["b", "a"], []], [[1, 0], [1, 1], [0, 0]], ("a", "b")),
])
def test_sequence_label_kinds(tmp_path, tokenizer, problem, labels, references, names):
    path = _write(tmp_path / "x.jsonl", [{"text": "the film", "label": y} for y in labels])
    split = _split(_spec("sequence_classification", path, problem_type=problem,
                         num_labels=1 if problem == "regression" else 2), tokenizer)
    assert split.label_names == names
    np.testing.assert_allclose(np.stack(split.references).astype(float), np.asarray(references, float))
    assert split.features[0]["labels"].dtype == (np.int32 if problem.startswith("single") else np.float32)


def test_multi_label_csv_cells_are_json_lists(tmp_path, tokenizer):
    with open(tmp_path / "x.csv", "w") as f:
        f.write('text,label\nthe film,"[""b"", ""a""]"\nthe plot,[]\nthe end,"[""a"", oops]"\n')
    spec = _spec("sequence_classification", tmp_path / "x.csv", problem_type="multi_label_classification")
    rows = task_features.read_task_rows(spec, spec.train_file, "data.train_file")
    split = task_features.build_split(rows[:2], spec, tokenizer)
    assert split.label_names == ("a", "b")
    np.testing.assert_array_equal(np.stack(split.references), [[1, 1], [0, 0]])
    with pytest.raises(ValueError, match=r"x\.csv:4: field 'label': a list of labels in a CSV cell is JSON"):
        task_features.build_split(rows, spec, tokenizer)


def test_long_rows_are_cut_and_counted(tmp_path, tokenizer):
    path = _write(tmp_path / "x.jsonl", [{"text": "the film " * 40, "label": 0}, {"text": "the film", "label": 1}])
    split = _split(_spec("sequence_classification", path, max_length=16, buckets=(16,)), tokenizer)
    assert len(split.features[0]["input_ids"]) == 16 and split.features[0]["input_ids"][-1] == tokenizer.sep_token_id
    assert split.notes == [f"{path}: 1 of 2 rows were cut to config.seq_len=16 tokens"]


@pytest.mark.parametrize("all_tokens", [False, True])
def test_token_labels_first_piece_or_every_piece(tmp_path, tokenizer, all_tokens):
    rows = [{"tokens": ["yesterday", "Priya", "Okafor", "visited", "Tokyo"],
             "tags": ["O", "B-PER", "I-PER", "O", "B-LOC"]}]
    names = ("O", "B-PER", "I-PER", "B-LOC")
    spec = _spec("token_classification", _write(tmp_path / "x.jsonl", rows), labels=names, num_labels=4,
                 label_all_tokens=all_tokens, max_length=64, buckets=(64,))
    split = _split(spec, tokenizer)
    feature, words = split.features[0], split.word_ids[0]
    pieces = task_features.pieces_of_words(tokenizer, rows[0]["tokens"])
    assert any(len(p) > 1 for p in pieces), "the test needs a word of several pieces"
    expected, owners = [IGNORE_INDEX], [-1]  # [CLS]
    for w, (word_pieces, tag) in enumerate(zip(pieces, rows[0]["tags"])):
        inside = tag.replace("B-", "I-")  # a B-X continuation is I-X where the tag set has it (not I-LOC here)
        continuation = names.index(inside if inside in names else tag) if all_tokens else IGNORE_INDEX
        expected += [names.index(tag)] + [continuation] * (len(word_pieces) - 1)
        owners += [w] + [-1] * (len(word_pieces) - 1)
    expected.append(IGNORE_INDEX)  # [SEP]
    owners.append(-1)
    assert feature["labels"].tolist() == expected and words.tolist() == owners
    assert split.references == [rows[0]["tags"]]


def test_qa_windows_hold_the_answer_and_map_back_to_its_characters(tmp_path, tokenizer):
    rows = synthetic_tasks.qa(24, seed=0)
    rows.append({"question": "what is the code ?", "context": "no code in here at all", "answers": []})
    spec = _spec("question_answering", _write(tmp_path / "qa.jsonl", rows), doc_stride=8, max_query_tokens=16)
    split = _split(spec, tokenizer)
    assert len(split.features) > len(rows)  # long contexts take several windows
    assert split.notes == [f"{spec.train_file}: 1 of 25 rows have no answer (trained to point at the first token; "
                           "scored as SQuAD 2.0 unanswerable questions)"]
    found = set()
    for feature, row, offsets, best in zip(split.features, split.feature_rows, split.offsets, split.max_context):
        start, end = int(feature["start_positions"]), int(feature["end_positions"])
        assert len(feature["input_ids"]) <= 32 and feature["input_ids"][0] == tokenizer.cls_token_id
        if start:
            assert split.contexts[row][offsets[start, 0]:offsets[end, 1]] == split.references[row][0]
            found.add(int(row))
        assert not best[offsets[:, 0] < 0].any()  # only context tokens have a window of most context
    assert found == set(range(24))
    # Every context token is of most context in exactly one window, whatever the overlap: the flags of a row's
    # windows add up to its context's tokens.
    for row, context in enumerate(split.contexts):
        tokens = sum(len(p) for p in task_features.pieces_of_words(tokenizer, context.split()))
        flags = sum(int(split.max_context[i].sum()) for i in np.flatnonzero(split.feature_rows == row))
        assert flags == tokens, row
    # Logits that point at the labelled span of each window answer every row exactly (EM 100), the
    # unanswerable one included (the null score wins there).
    outputs = []
    for feature in split.features:
        n = len(feature["input_ids"])
        start, end = np.full(n, -5.0), np.full(n, -5.0)
        start[int(feature["start_positions"])] = end[int(feature["end_positions"])] = 5.0
        outputs.append({"start_logits": start, "end_logits": end})
    metrics = task_metrics.score(split, outputs, spec)
    assert metrics["exact_match"] == 100.0 and metrics["f1"] == 100.0


def test_multiple_choice_features(tmp_path, tokenizer):
    rows = synthetic_tasks.choice(3, seed=1)
    rows[1]["label"] = rows[1]["choices"][2]  # the right choice may be given by its text
    split = _split(_spec("multiple_choice", _write(tmp_path / "mc.jsonl", rows)), tokenizer)
    feature = split.features[0]
    assert feature["input_ids"].shape[0] == 4 and feature["attention_mask"].shape == feature["input_ids"].shape
    assert split.references == [rows[0]["label"], 2, rows[2]["label"]]
    for choice, ids, mask in zip(rows[0]["choices"], feature["input_ids"], feature["attention_mask"]):
        real = ids[mask == 1]
        assert tokenizer.decode(real, skip_special_tokens=True).endswith(choice)


def test_batches_pad_to_buckets_resume_exactly_and_split_over_processes(tmp_path, tokenizer):
    rows = synthetic_tasks.classification(40, seed=3)
    rows[5]["text"] = "the film " * 20 + "excellent"  # one long row: a longer bucket now and then
    spec = _spec("sequence_classification", _write(tmp_path / "c.jsonl", rows), max_length=64, buckets=(16, 32, 64))
    split = _split(spec, tokenizer)
    collate = task_batches.Collate(spec.buckets, ("input_ids", "attention_mask", "token_type_ids"),
                                   {"input_ids": tokenizer.pad_token_id})

    def batches(process_index=0, process_count=1):
        return task_batches.TaskBatches(split.features, batch_size=8, seed=0, collate=collate,
                                        identity={"file": "c"}, process_index=process_index,
                                        process_count=process_count)

    it = batches()
    lengths = set()
    for _ in range(12):  # more than an epoch
        batch = next(it)
        length = batch["input_ids"].shape[1]
        lengths.add(length)
        assert length in spec.buckets and batch["labels"].shape == (8,)
        real = batch["attention_mask"].sum(1)
        assert length == task_batches.bucket_length(int(real.max()), spec.buckets)
        assert (batch["input_ids"][batch["attention_mask"] == 0] == tokenizer.pad_token_id).all()
    assert len(lengths) > 1
    state = json.loads(json.dumps(it.get_state()))  # as a checkpoint stores it
    expected = [next(it) for _ in range(3)]
    again = batches()
    again.set_state(state)
    for want in expected:
        got = next(again)
        assert all(np.array_equal(got[k], want[k]) for k in want)
    halves = [batches(p, 2) for p in range(2)]
    for half in halves:
        half.set_state(state)
    for want in expected:
        parts = [next(h) for h in halves]
        assert all(np.array_equal(np.concatenate([p[k] for p in parts]), want[k]) for k in want)
    other = task_batches.TaskBatches(split.features, batch_size=8, seed=1, collate=collate, identity={"file": "c"})
    with pytest.raises(ValueError, match=r"saved by a pipeline with other arguments \(seed: saved 0, here 1\)"):
        other.set_state(state)
    evals = list(task_batches.eval_batches(split.features[:11], batch_size=8, collate=collate))
    assert [real for _, real in evals] == [8, 3] and evals[1][0]["input_ids"].shape[0] == 8


def test_batch_shardings_of_every_rank():
    mesh = partitioning.make_mesh("data=-1")
    batch = {"input_ids": np.zeros((8, 4, 16)), "labels": np.zeros(8), "targets": np.zeros((8, 3)),
             "attention_mask": np.zeros((8, 4, 16))}
    shardings = partitioning.batch_shardings(mesh, partitioning.DEFAULT_RULES, batch, ("input_ids", "attention_mask"))
    assert shardings["labels"].spec == jax.sharding.PartitionSpec(("data", "fsdp"))
    assert shardings["targets"].spec == jax.sharding.PartitionSpec(("data", "fsdp"), None)
    assert shardings["input_ids"].spec == jax.sharding.PartitionSpec(("data", "fsdp"), None, "sequence")
    arrays = partitioning.put_batch(batch, shardings)
    assert arrays["labels"].sharding.shard_shape((8,)) == (1,)
    assert arrays["input_ids"].sharding.shard_shape((8, 4, 16)) == (1, 4, 16)


def test_squad_metrics_and_normalisation():
    assert task_metrics.squad_normalize("The  Eiffel-Tower, in Paris!") == "eiffeltower in paris"
    assert task_metrics.exact_match("the Paris.", "paris") == 1.0
    assert task_metrics.squad_f1("in Paris France", "Paris") == pytest.approx(2 * (1 / 3) / (1 + 1 / 3))
    assert task_metrics.squad_f1("", "") == 1.0 and task_metrics.squad_f1("Paris", "") == 0.0


def test_seq2seq_features_and_rouge(tmp_path, tokenizer):
    rows = [{"source": "the film was long", "target": "long was film the"},
            {"source": "the plot " * 10, "target": "short"}, {"source": "friday", "target": "the film " * 12}]
    spec = _spec("seq2seq", _write(tmp_path / "s.jsonl", rows), max_length=12, buckets=(12,), max_target_length=8)
    split = _split(spec, tokenizer)
    first = split.features[0]
    assert list(first["input_ids"]) == tokenizer("the film was long")["input_ids"]
    assert list(first["labels"]) == tokenizer("long was film the")["input_ids"]
    assert len(split.features[1]["input_ids"]) == 12 and len(split.features[2]["labels"]) == 8
    assert split.features[2]["labels"][-1] == task_features.end_token_id(tokenizer) == tokenizer.sep_token_id
    assert split.notes == [f"{spec.train_file}: 1 of 3 sources were cut to config.seq_len=12 tokens",
                           f"{spec.train_file}: 1 of 3 targets were cut to config.data.max_target_length=8 tokens"]
    collate = task_batches.Collate(spec.buckets, ("input_ids", "attention_mask", "token_type_ids", "labels"),
                                   {"input_ids": tokenizer.pad_token_id, "labels": IGNORE_INDEX}, {"labels": 8})
    batch = collate(split.features[:2])
    assert batch["input_ids"].shape == (2, 12) and batch["labels"].shape == (2, 8)
    assert (batch["labels"][1, len(split.features[1]["labels"]):] == IGNORE_INDEX).all()
    # ROUGE by rouge-score: the exact target scores 100, the words in the source's order less (longest common
    # subsequence of 1 of 4 words), nothing 0; the loss is per target token.
    outputs = [{"prediction": p, "target_nll": np.float32(n), "target_tokens": np.int32(t)} for p, n, t in
               [("long was film the", 1.0, 6), ("", 2.0, 3), ("the film was long", 3.0, 11)]]
    metrics = task_metrics.score(split, outputs, spec)
    assert metrics["loss"] == pytest.approx(6.0 / 20)
    assert metrics["exact_match"] == pytest.approx(100 / 3)
    from rouge_score import rouge_scorer

    expected = [rouge_scorer.RougeScorer(["rougeL"]).score(t, o["prediction"])["rougeL"].fmeasure
                for t, o in zip(split.references, outputs)]
    assert expected[0] == 1.0 and expected[1] == 0.0
    assert metrics["rougeL"] == pytest.approx(100 * np.mean(expected))


def test_classification_and_entity_metrics(tmp_path, tokenizer):
    spec = _spec("sequence_classification", "unused", num_labels=3)
    split = task_features.TaskSplit(rows=[None] * 4, features=[{}] * 4, feature_rows=np.arange(4),
                                    references=[0, 1, 2, 2], label_names=None)
    logits = [np.eye(3)[p] * 4.0 for p in (0, 1, 2, 0)]
    metrics = task_metrics.score(split, [{"logits": x} for x in logits], spec)
    assert metrics["accuracy"] == 0.75 and metrics["f1"] == pytest.approx(np.mean([2 / 3, 1, 2 / 3]))
    regression = dataclasses.replace(spec, problem_type="regression", num_labels=1)
    split.references = [np.float32(v) for v in (1.0, 2.0, 3.0, 4.0)]
    metrics = task_metrics.score(split, [{"logits": np.asarray([v])} for v in (1, 2, 4, 8)], regression)
    assert metrics["spearman"] == pytest.approx(1.0) and 0.9 < metrics["pearson"] < 1.0
    metrics = task_metrics.score(split, [{"logits": np.asarray([1.0])}] * 4, regression)
    assert metrics["pearson"] is None  # undefined for a constant prediction, not NaN
    # Entities, read by seqeval from the words' predicted tags (a word by its first sub-token).
    rows = [{"tokens": ["Anna", "Smith", "met", "Omar"], "tags": ["B-PER", "I-PER", "O", "B-PER"]}]
    names = ("O", "B-PER", "I-PER", "B-LOC")
    ner = _spec("token_classification", _write(tmp_path / "n.jsonl", rows), labels=names, num_labels=4)
    split = _split(ner, tokenizer)
    predicted = ["B-PER", "I-PER", "O", "B-LOC"]  # one of the two entities right
    logits = np.zeros((len(split.features[0]["input_ids"]), 4))
    for position in np.flatnonzero(split.word_ids[0] >= 0):
        logits[position, names.index(predicted[split.word_ids[0][position]])] = 5.0
    metrics = task_metrics.score(split, [{"logits": logits}], ner)
    assert metrics["entity_precision"] == 0.5 and metrics["entity_recall"] == 0.5 and metrics["accuracy"] == 0.75
