"""train.data: embedded corpus, TFDS array_record builder, SentencePiece cache, grain pipeline."""

import glob
import gzip
import json
import os
import random

import grain
import numpy as np
import pytest
import sentencepiece as spm
import tensorflow_datasets as tfds
from etils import epath
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from train import data
from train.data import pipeline, text_corpus

WORDS = (
    "light earth water night day seed tree fruit beast fowl river stone gold city king people land "
    "house field mountain sea wind fire bread wine voice word heart hand eye shepherd flock servant"
).split()
VOCAB_SIZE = 96


def _tiny_documents(count, seed):
    """Distinct documents of one to three short lines of words."""
    rng = random.Random(seed)
    documents = []
    for i in range(count):
        lines = [
            " ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 12))) for _ in range(rng.randint(1, 3))
        ]
        lines[0] = f"doc {i} {lines[0]}"
        documents.append("\n".join(lines))
    return documents


def _write(path, documents):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "wt", encoding="utf-8") as f:
        # Extra blank lines and trailing spaces must not create empty or different documents.
        f.write("\n\n\n".join(d.replace("\n", "  \n") for d in documents) + "\n")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A 60-document corpus prepared as a TFDS dataset, its splits, and a tokenizer trained on it."""
    root = tmp_path_factory.mktemp("tiny")
    documents = _tiny_documents(60, seed=0)
    path = str(root / "tiny.txt")
    _write(path, documents)
    data_dir, cache_dir = str(root / "tfds"), str(root / "spm")
    train = data.open_source(path, split="train", data_dir=data_dir)
    model_path = data.build_tokenizer(train, vocab_size=VOCAB_SIZE, cache_dir=cache_dir)
    return {
        "root": root,
        "path": path,
        "documents": documents,
        "data_dir": data_dir,
        "cache_dir": cache_dir,
        "train": train,
        "model_path": model_path,
        "tokenizer": data.load_tokenizer(model_path),
    }


def _make(tiny, **kwargs):
    args = dict(seq_len=16, batch_size=4, seed=0, tokenizer=tiny["tokenizer"], shard_index=0, shard_count=1)
    args.update(kwargs)
    return data.make_dataset(args.pop("source", tiny["train"]), **args)


def _take(iterator, count):
    return [next(iterator) for _ in range(count)]


def _assert_batches_equal(left, right):
    assert len(left) == len(right)
    for a, b in zip(left, right):
        assert a.keys() == b.keys()
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])


def _stream(batches):
    """All non-padding tokens in emission order."""
    rows = [(b["inputs"][r], b["segment_ids"][r]) for b in batches for r in range(len(b["inputs"]))]
    return np.concatenate([inputs[segments > 0] for inputs, segments in rows])


def _tokenized(tokenizer, text):
    return np.asarray(tokenizer.encode(text) + [data.EOS_ID], np.int32)


# --- embedded corpus ---------------------------------------------------------------------------------


def test_embedded_corpus_is_readable_and_larger_than_1mb():
    lines = list(data.read_embedded_corpus())
    assert sum(len(line) + 1 for line in lines) > 4_000_000
    assert lines[0] == "In the beginning God created the heaven and the earth."
    assert lines[-1] == "The grace of our Lord Jesus Christ be with you all. Amen."
    assert sum(1 for line in lines if line) == 31_102  # verses
    assert len(list(data.iter_documents(lines))) == 1_189  # chapters
    assert os.path.getsize(data.EMBEDDED_CORPUS) < 2_000_000
    readme = open(os.path.join(os.path.dirname(data.EMBEDDED_CORPUS), "README.md")).read()
    assert "bible-kjv" in readme and "Public domain" in readme


def test_embedded_corpus_as_tfds_dataset(tmp_path):
    train = data.open_source("kjv", split="train", data_dir=str(tmp_path))
    validation = data.open_source("embedded", split="validation", data_dir=str(tmp_path))
    assert train.name == "text_corpus/kjv:1.0.0"
    assert (len(train), len(validation)) == (1_166, 23)
    assert train[0].startswith("In the beginning God created the heaven and the earth.\nAnd the earth was")
    assert glob.glob(str(tmp_path / "text_corpus/kjv/1.0.0/*.array_record-*"))


# --- documents and the builder -----------------------------------------------------------------------


def test_iter_documents_groups_paragraphs_or_lines():
    lines = ["a b ", "c", "", "", "d", "   ", "e f", ""]
    assert list(data.iter_documents(lines)) == ["a b\nc", "d", "e f"]
    assert list(data.iter_documents(lines, "lines")) == ["a b", "c", "d", "e f"]
    with pytest.raises(ValueError, match="documents='words'"):
        list(data.iter_documents(lines, "words"))


def test_builder_writes_array_record_and_reads_back_the_same_documents(tiny):
    documents = tiny["documents"]
    validation = data.open_source(tiny["path"], split="validation", data_dir=tiny["data_dir"])
    train = tiny["train"]
    assert train.name.startswith("text_corpus/tiny_") and train.name.endswith(":1.0.0")
    # Every 50th document (the 50th, index 49) is validation; records keep corpus order.
    assert [validation[i] for i in range(len(validation))] == [documents[49]]
    assert [train[i] for i in range(len(train))] == documents[:49] + documents[50:]
    config_dir = os.path.join(tiny["data_dir"], train.name.replace(":", "/"))
    written = sorted(os.listdir(config_dir))
    assert any(".array_record-" in name and "-train." in name for name in written), written
    assert not any("tfrecord" in name for name in written), written


def test_tiny_corpus_gives_its_last_document_to_validation(tmp_path):
    _write(str(tmp_path / "three.txt"), ["one", "two", "three"])
    path, data_dir = str(tmp_path / "three.txt"), str(tmp_path / "tfds")
    train = data.open_source(path, data_dir=data_dir)
    validation = data.open_source(path, split="validation", data_dir=data_dir)
    assert [train[i] for i in range(len(train))] == ["one", "two"]
    assert [validation[i] for i in range(len(validation))] == ["three"]


def test_directory_source_reads_text_files_in_sorted_order(tmp_path):
    corpus = tmp_path / "corpus"
    _write(str(corpus / "b.txt"), ["b one", "b two"])
    _write(str(corpus / "a" / "a.txt.gz"), ["a one\na more"])
    _write(str(corpus / "notes.md"), ["ignored"])
    data_dir = str(tmp_path / "tfds")
    source = data.open_source(str(corpus), data_dir=data_dir)
    assert [source[i] for i in range(len(source))] == ["a one\na more", "b one"]
    lines = data.open_source(str(corpus), data_dir=data_dir, documents="lines")
    assert lines.name != source.name
    assert [lines[i] for i in range(len(lines))] == ["a one", "a more", "b one"]


def test_local_source_is_rebuilt_when_a_file_changes(tmp_path):
    path = str(tmp_path / "text.txt")
    _write(path, ["first", "second"])
    before = data.open_source(path, data_dir=str(tmp_path / "tfds"))
    _write(path, ["first", "changed", "third"])
    os.utime(path, ns=(1, 1))  # Make the change visible even within one mtime tick.
    after = data.open_source(path, data_dir=str(tmp_path / "tfds"))
    assert before.name != after.name
    assert [after[i] for i in range(len(after))] == ["first", "changed"]


class TinyCatalogDocs(text_corpus.TextCorpus):
    """A stand-in for a catalog dataset: another name, its text in a feature called `content`."""

    VERSION = tfds.core.Version("2.0.0")
    BUILDER_CONFIGS = []
    DEFAULT_CONFIG_NAME = None

    def _info(self):
        features = tfds.features.FeaturesDict({"content": tfds.features.Text(), "number": np.int64})
        return tfds.core.DatasetInfo(builder=self, features=features, disable_shuffling=True)

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples()}

    def _generate_examples(self):
        for i in range(5):
            yield i, {"content": f"catalog document {i}", "number": i}


def test_catalog_datasets_open_by_name_from_data_dir(tiny, tmp_path):
    # Our own builder, prepared earlier, reopened by its TFDS name (read from files, not from code).
    by_name = data.open_source(tiny["train"].name, split="train", data_dir=tiny["data_dir"])
    assert [by_name[i] for i in range(len(by_name))] == [tiny["train"][i] for i in range(len(tiny["train"]))]

    data_dir = str(tmp_path / "tfds")
    with pytest.raises(ValueError, match="not prepared"):
        data.open_source("tiny_catalog_docs", data_dir=data_dir, text_key="content")
    TinyCatalogDocs(data_dir=data_dir, file_format="array_record").download_and_prepare()
    source = data.open_source("tfds:tiny_catalog_docs", data_dir=data_dir, text_key="content")
    assert source.name == "tiny_catalog_docs:2.0.0"
    assert [source[i] for i in range(len(source))] == [f"catalog document {i}" for i in range(5)]
    assert len(data.open_source("tiny_catalog_docs:2.0.0", split="train[:40%]", data_dir=data_dir,
                                text_key="content")) == 2
    with pytest.raises(ValueError, match="text_key='text'.*content"):
        data.open_source("tiny_catalog_docs", data_dir=data_dir)
    with pytest.raises(ValueError, match="split='test'"):
        data.open_source("tiny_catalog_docs", split="test", data_dir=data_dir, text_key="content")
    with pytest.raises(ValueError, match="source='no_such_dataset_xyz'"):
        data.open_source("no_such_dataset_xyz", data_dir=data_dir)
    with pytest.raises(ValueError, match="no such file"):
        data.open_source("./missing_corpus.txt", data_dir=data_dir)


# --- tokenizer ---------------------------------------------------------------------------------------


def test_tokenizer_is_trained_once_then_loaded_from_the_cache(tiny, monkeypatch):
    calls = []
    train = spm.SentencePieceTrainer.train
    monkeypatch.setattr(spm.SentencePieceTrainer, "train", lambda **kw: calls.append(kw) or train(**kw))

    path = tiny["model_path"]  # Trained by the fixture.
    mtime = os.stat(path).st_mtime_ns
    assert data.build_tokenizer(tiny["train"], vocab_size=VOCAB_SIZE, cache_dir=tiny["cache_dir"]) == path
    reopened = data.open_source(tiny["path"], data_dir=tiny["data_dir"])  # Same corpus, new object.
    assert data.build_tokenizer(reopened, vocab_size=VOCAB_SIZE, cache_dir=tiny["cache_dir"]) == path
    assert calls == [] and os.stat(path).st_mtime_ns == mtime
    assert json.load(open(path.removesuffix(".model") + ".json"))["source"] == tiny["train"].name

    other = data.build_tokenizer(tiny["train"], vocab_size=VOCAB_SIZE + 8, cache_dir=tiny["cache_dir"])
    assert other != path and len(calls) == 1
    assert not [n for n in os.listdir(tiny["cache_dir"]) if n.startswith(".train-")]


def test_tokenizer_special_ids_and_round_trip(tiny):
    tokenizer = tiny["tokenizer"]
    assert 40 < tokenizer.vocab_size() <= VOCAB_SIZE
    assert [tokenizer.pad_id(), tokenizer.unk_id(), tokenizer.bos_id(), tokenizer.eos_id()] == [0, 1, 2, 3]
    assert [tokenizer.piece_to_id(p) for p in data.CONTROL_SYMBOLS] == [4, 5, 6]
    line = tiny["documents"][3].split("\n")[0]
    ids = tokenizer.encode(line)
    assert data.UNK_ID not in ids and tokenizer.decode(ids) == line


def test_tokenizer_arguments_are_checked(tiny):
    with pytest.raises(ValueError, match="vocab_size=8"):
        data.build_tokenizer(tiny["train"], vocab_size=8, cache_dir=tiny["cache_dir"])
    with pytest.raises(ValueError, match="model_type='word'"):
        data.build_tokenizer(tiny["train"], model_type="word", cache_dir=tiny["cache_dir"])
    with pytest.raises(ValueError, match="tokenizer='/nonexistent.model'"):
        data.load_tokenizer("/nonexistent.model")


# --- pipeline ----------------------------------------------------------------------------------------


def test_batches_have_fixed_shapes_and_int32_ids(tiny):
    batches = _take(_make(tiny, seq_len=16, batch_size=4), 30)  # Several epochs of the tiny corpus.
    for batch in batches:
        assert sorted(batch) == ["inputs", "positions", "segment_ids"]
        for value in batch.values():
            assert value.shape == (4, 16) and value.dtype == np.int32
        assert batch["inputs"].min() >= 0 and batch["inputs"].max() < VOCAB_SIZE
        assert (batch["segment_ids"] >= 1).all()  # Repeating forever never pads.
        # Positions count from 0 wherever a new piece starts.
        starts = np.ones_like(batch["segment_ids"], bool)
        starts[:, 1:] = batch["segment_ids"][:, 1:] != batch["segment_ids"][:, :-1]
        assert (batch["positions"][starts] == 0).all()
        inside = ~starts[:, 1:]
        assert (batch["positions"][:, 1:][inside] == batch["positions"][:, :-1][inside] + 1).all()


def test_same_seed_same_batches_and_another_seed_another_order(tiny):
    first = _take(_make(tiny, seed=3), 12)
    _assert_batches_equal(first, _take(_make(tiny, seed=3), 12))
    other = _take(_make(tiny, seed=4), 12)
    assert not all(np.array_equal(a["inputs"], b["inputs"]) for a, b in zip(first, other))
    # Same multiset of documents in an epoch, only the order differs.
    one_epoch = lambda seed: np.sort(_stream(list(_make(tiny, seed=seed, num_epochs=1))))
    np.testing.assert_array_equal(one_epoch(3), one_epoch(4))


@pytest.mark.parametrize("num_epochs", [None, 2])
def test_state_resumes_exactly_after_json_round_trip(tiny, num_epochs):
    # Every k from 0 on, so the state is saved both with and without a split document in the packer.
    reference = _take(_make(tiny, num_epochs=num_epochs, seq_len=8), 20)
    for k in range(0, 14):
        iterator = _make(tiny, num_epochs=num_epochs, seq_len=8)
        _take(iterator, k)
        state = iterator.get_state()
        assert json.loads(json.dumps(state)) == state
        resumed = _make(tiny, num_epochs=num_epochs, seq_len=8)
        resumed.set_state(json.loads(json.dumps(state)))
        _assert_batches_equal(_take(resumed, 6), reference[k : k + 6])


def test_state_from_another_pipeline_is_refused(tiny):
    state = _make(tiny, seed=1).get_state()
    with pytest.raises(ValueError, match="seed: saved 1, here 2"):
        _make(tiny, seed=2).set_state(state)
    with pytest.raises(ValueError, match="state: expected a dict"):
        _make(tiny, seed=1).set_state({"next_index": 3})


def test_grain_checkpoint_handler_saves_and_restores(tiny, tmp_path):
    iterator = _make(tiny, seed=5)
    _take(iterator, 3)
    grain.checkpoint.CheckpointHandler().save(epath.Path(tmp_path), item=iterator)
    expected = _take(iterator, 4)
    restored = grain.checkpoint.CheckpointHandler().restore(epath.Path(tmp_path), item=_make(tiny, seed=5))
    _assert_batches_equal(_take(restored, 4), expected)


def test_process_shards_are_disjoint_and_cover_the_split(tiny):
    tokenizer, train = tiny["tokenizer"], tiny["train"]
    shards = []
    for index in range(3):
        stream = _stream(list(_make(tiny, shard_index=index, shard_count=3, num_epochs=1)))
        pieces = np.split(stream, np.flatnonzero(stream == data.EOS_ID)[:-1] + 1)
        shards.append({tuple(p) for p in pieces})
        assert len(shards[-1]) == len(pieces)  # No document twice within a shard.
    expected = {tuple(_tokenized(tokenizer, train[i])) for i in range(len(train))}
    assert len(expected) == len(train)
    assert shards[0] | shards[1] | shards[2] == expected
    assert not (shards[0] & shards[1] or shards[0] & shards[2] or shards[1] & shards[2])


# No shrinking: each example builds a pipeline, and shrinking a failure would take minutes on 2 cores.
@settings(
    max_examples=12,
    deadline=None,
    phases=(Phase.explicit, Phase.reuse, Phase.generate),
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    seq_len=st.integers(2, 40),
    batch_size=st.integers(1, 5),
    seed=st.integers(0, 2**31 - 1),
    shard=st.sampled_from([(0, 1), (1, 2), (2, 3)]),
)
def test_packing_keeps_token_order_and_loses_no_token(tiny, seq_len, batch_size, seed, shard):
    tokenizer, train = tiny["tokenizer"], tiny["train"]
    shard_index, shard_count = shard
    batches = list(_make(tiny, seq_len=seq_len, batch_size=batch_size, seed=seed, num_epochs=1,
                         shard_index=shard_index, shard_count=shard_count))
    # grain's shuffle is a pure function of (seed, length), so the document order is reproducible here.
    order = list(grain.MapDataset.range(len(train))[shard_index::shard_count].shuffle(seed=seed))
    expected = np.concatenate([_tokenized(tokenizer, train[i]) for i in order])
    np.testing.assert_array_equal(_stream(batches), expected)

    rows = np.concatenate([b["segment_ids"] for b in batches])
    assert len(batches) == -(-(-(-len(expected) // seq_len)) // batch_size)
    # Padding (segment 0) only at the end: once a row pads, the rest of the run is padding.
    flat = rows.reshape(-1)
    assert (flat[: len(expected)] > 0).all() and (flat[len(expected) :] == 0).all()
    padded = np.concatenate([b["inputs"] for b in batches]).reshape(-1)[len(expected) :]
    assert (padded == data.PAD_ID).all()


def test_make_dataset_defaults_and_string_sources(tiny):
    iterator = data.make_dataset(
        tiny["path"], seq_len=8, batch_size=2, data_dir=tiny["data_dir"], tokenizer=tiny["model_path"]
    )
    assert iterator.get_state()["pipeline"]["shard_index"] == 0  # jax.process_index() here.
    assert iterator.get_state()["pipeline"]["shard_count"] == 1
    _assert_batches_equal(_take(iterator, 3), _take(_make(tiny, seq_len=8, batch_size=2), 3))
    validation = data.make_dataset(tiny["path"], split="validation", seq_len=8, batch_size=2,
                                   data_dir=tiny["data_dir"], tokenizer=tiny["tokenizer"], num_epochs=1)
    stream = _stream(list(validation))
    np.testing.assert_array_equal(stream, _tokenized(tiny["tokenizer"], tiny["documents"][49]))


def test_make_dataset_arguments_are_checked(tiny):
    bad = [
        (dict(seq_len=1), "seq_len=1"),
        (dict(batch_size=0), "batch_size=0"),
        (dict(seed=-1), "seed=-1"),
        (dict(num_epochs=0), "num_epochs=0"),
        (dict(shard_index=3, shard_count=3), "shard_index=3"),
        (dict(shard_count=0), "shard_count=0"),
        (dict(shard_index=99, shard_count=100), "shard_count=100: shard 99"),
        (dict(split="validation"), "split='validation'"),
        (dict(tokenizer=42), "tokenizer=42"),
    ]
    for kwargs, message in bad:
        with pytest.raises(ValueError, match=message):
            _make(tiny, **kwargs)
    assert isinstance(_make(tiny), pipeline.DataIterator)


# --- sharded batches (multi-process) -----------------------------------------------------------------

def _sharded(tiny, process_index, process_count, num_shards=4, global_batch_size=8):
    return data.make_sharded_dataset(tiny["train"], seq_len=16, global_batch_size=global_batch_size,
                                     num_shards=num_shards, process_index=process_index,
                                     process_count=process_count, seed=0, tokenizer=tiny["tokenizer"])


def test_global_batch_does_not_depend_on_the_process_count(tiny):
    one = _take(_sharded(tiny, 0, 1), 3)
    for processes in (2, 4):
        parts = [_take(_sharded(tiny, p, processes), 3) for p in range(processes)]
        # Process p's rows are rows p * (8 / processes) ... of the global batch that one process reads.
        joined = [{k: np.concatenate([part[i][k] for part in parts]) for k in one[i]} for i in range(3)]
        _assert_batches_equal(joined, one)
    # Shards are disjoint slices of the corpus: the four shards' first rows all differ.
    first = one[0]["inputs"].reshape(4, 2, 16)[:, 0]
    assert len({row.tobytes() for row in first}) == 4


def test_sharded_state_restores_under_another_process_count(tiny):
    from train import distributed

    readers = [_sharded(tiny, p, 2) for p in range(2)]
    for reader in readers:
        _take(reader, 2)
    merged = distributed.merge_data_states([r.get_state() for r in readers])
    assert sorted(merged["shards"]) == ["0", "1", "2", "3"]
    expected = _take(_sharded(tiny, 0, 1), 3)[2]
    resumed = _sharded(tiny, 0, 1)
    resumed.set_state(json.loads(json.dumps(merged)))  # as a checkpoint stores it
    _assert_batches_equal([next(resumed)], [expected])


@pytest.mark.parametrize("kwargs,message", [
    (dict(num_shards=3), "num_shards=3: must be a multiple of the 2 processes"),
    (dict(num_shards=4, global_batch_size=6), "num_shards=4: must divide the global batch size 6"),
])
def test_sharded_dataset_checks_its_arguments(tiny, kwargs, message):
    with pytest.raises(ValueError, match=message):
        _sharded(tiny, 0, 2, **kwargs)


def test_sharded_state_refuses_another_shard_count(tiny):
    state = _sharded(tiny, 0, 1, num_shards=2).get_state()
    with pytest.raises(ValueError, match="saved with data.shards=2, this run has 4"):
        _sharded(tiny, 0, 1).set_state(state)


# --- denoising examples (encoder/decoder batches) ----------------------------------------------------------------

def _sentence_tokens(tokenizer, text):
    ids = [i for line in text.split("\n") for i in tokenizer.encode(line)]
    return np.asarray(ids + [data.EOS_ID], np.int32)


def test_denoising_batches_hold_the_packed_stream_as_labels(tiny):
    tokenizer, train = tiny["tokenizer"], tiny["train"]
    batches = list(_make(tiny, seq_len=12, batch_size=3, seed=7, num_epochs=1, denoising={}))
    for batch in batches:
        assert sorted(batch) == sorted(["input_ids", "attention_mask", "decoder_input_ids",
                                        "decoder_attention_mask", "labels"])
        assert all(v.shape == (3, 12) and v.dtype == np.int32 for v in batch.values())
    # Labels are <s> row </s>: the rows, end to end, are the documents (line by line) in the shuffled order.
    labels = np.concatenate([b["labels"] for b in batches])
    rows = [row[1:(row != -100).sum() - 1] for row in labels if (row != -100).any()]
    assert all(row[0] == data.BOS_ID for row in labels if (row != -100).any())
    order = list(grain.MapDataset.range(len(train)).shuffle(seed=7))
    np.testing.assert_array_equal(np.concatenate(rows), np.concatenate([_sentence_tokens(tokenizer, train[i])
                                                                        for i in order]))
    inputs = np.concatenate([b["input_ids"] for b in batches])
    assert (inputs == 6).any() and not np.array_equal(inputs, labels)  # noised: [MASK]s


@pytest.mark.parametrize("num_epochs", [None, 1])
def test_denoising_state_resumes_exactly(tiny, num_epochs):
    kwargs = dict(seq_len=10, num_epochs=num_epochs, denoising={"mask_ratio": 0.3})
    reference = _take(_make(tiny, **kwargs), 14)
    for k in (0, 1, 4, 9):
        iterator = _make(tiny, **kwargs)
        _take(iterator, k)
        state = iterator.get_state()
        assert json.loads(json.dumps(state)) == state
        resumed = _make(tiny, **kwargs)
        resumed.set_state(json.loads(json.dumps(state)))
        _assert_batches_equal(_take(resumed, 5), reference[k:k + 5])
    # Same arguments, same noise; other noising options refuse the state.
    _assert_batches_equal(_take(_make(tiny, **kwargs), 3), reference[:3])
    with pytest.raises(ValueError, match="denoising: saved"):
        _make(tiny, **{**kwargs, "denoising": {"mask_ratio": 0.2}}).set_state(state)
    with pytest.raises(ValueError, match="denoising=.*mask_ratio=2"):
        _make(tiny, denoising={"mask_ratio": 2})
    with pytest.raises(ValueError, match="seq_len=2"):
        _make(tiny, seq_len=2, denoising={})
