"""The pickle-free block store: HF's pickled block_records.npy is converted once (and only with --trust-pickle,
through an unpickler that builds nothing but an array of bytes); everything else refuses pickles without running
them; a store round-trips texts and token ids; mismatched shapes and dtypes name the file and the rule."""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest

from jaxmodels.realm import BlockStore, load_tokenizer
from jaxmodels.realm.convert_blocks import main as convert_blocks
from tests.realm.cases import BLOCKS, hf_tokenizer


class _Payload:
    """Unpickling this runs ``os.system`` (what a malicious file does); nothing here may ever run it."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _malicious_npy(path: str, marker: str) -> None:
    records = np.empty(2, dtype=object)
    records[0], records[1] = b"the cat", _Payload(marker)
    np.save(path, records, allow_pickle=True)


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """HF's block records file as HF's RealmRetriever.save_pretrained writes it, converted to a store."""
    root = tmp_path_factory.mktemp("blocks")
    records = os.path.join(root, "block_records.npy")
    np.save(records, np.array(BLOCKS, dtype=object), allow_pickle=True)
    _, tokenizer_dir = hf_tokenizer()
    out = os.path.join(root, "store")
    assert convert_blocks(["--block-records", records, "--tokenizer", tokenizer_dir, "--out", out,
                           "--trust-pickle", "--reader-seq-len", "20"]) == 0
    return root, out


def test_conversion_round_trips_texts_and_ids(converted):
    _, out = converted
    store = BlockStore.open(out, reader_seq_len=20)
    tok, _ = hf_tokenizer()
    assert len(store) == 7 and [store.text(i) for i in range(7)] == [b.decode() for b in BLOCKS]
    for i, text in enumerate(BLOCKS):
        ids = tok(text.decode(), add_special_tokens=False)["input_ids"]
        assert store.num_tokens[i] == len(ids)
        assert store.token_ids[i, :len(ids)].tolist() == ids and (store.token_ids[i, len(ids):] == 0).all()
    assert store.token_ids.dtype == np.uint16 and isinstance(store.token_ids, np.memmap)
    blocks = store.tokens(multiple=4)
    assert blocks.token_ids.shape == (8, store.block_len) and int(blocks.num_tokens[7]) == 0
    assert (blocks.cls_token_id, blocks.sep_token_id, blocks.pad_token_id) == (2, 3, 0)


def test_conversion_without_trust_is_refused(converted, tmp_path, capsys):
    root, _ = converted
    marker = str(tmp_path / "pwned")
    _malicious_npy(str(tmp_path / "bad.npy"), marker)
    for records in (os.path.join(root, "block_records.npy"), str(tmp_path / "bad.npy")):
        assert convert_blocks(["--block-records", records, "--tokenizer", hf_tokenizer()[1],
                               "--out", str(tmp_path / "out")]) == 2
        assert "unpickling can run arbitrary code" in capsys.readouterr().err
    assert not os.path.exists(marker) and not os.path.exists(tmp_path / "out")


def test_a_malicious_pickle_never_runs_even_when_trusted(tmp_path, capsys):
    marker = str(tmp_path / "pwned")
    _malicious_npy(str(tmp_path / "bad.npy"), marker)
    assert convert_blocks(["--block-records", str(tmp_path / "bad.npy"), "--tokenizer", hf_tokenizer()[1],
                           "--out", str(tmp_path / "out"), "--trust-pickle"]) == 2
    assert "refused to unpickle posix.system" in capsys.readouterr().err
    assert not os.path.exists(marker)


def test_pickles_are_refused_everywhere_else(converted, tmp_path):
    root, out = converted
    marker = str(tmp_path / "pwned")
    with pytest.raises(ValueError, match=r"HF block records .* are not read here; convert .* --trust-pickle"):
        BlockStore.open(os.path.join(root, "block_records.npy"))
    store = str(tmp_path / "store")
    shutil.copytree(out, store)
    _malicious_npy(os.path.join(store, "num_tokens.npy"), marker)
    with pytest.raises(ValueError, match=r"num_tokens\.npy: holds pickled Python objects; refused"):
        BlockStore.open(store)
    assert not os.path.exists(marker)


@pytest.mark.parametrize("name,array,rule", [
    ("token_ids.npy", np.zeros((7, 3), np.float32), r"token_ids\.npy: float32 \(7, 3\); .* uint16 or int32 \(7, \d+\)"),
    ("num_tokens.npy", np.zeros((6,), np.int32), r"num_tokens\.npy: int32 \(6,\); .* int32 \(7,\)"),
    ("text_offsets.npy", np.zeros((8,), np.int64), r"text\.bin: \d+ bytes; text_offsets\.npy ends at 0"),
])
def test_mismatched_store_arrays_name_the_file(converted, tmp_path, name, array, rule):
    store = str(tmp_path / "store")
    shutil.copytree(converted[1], store)
    np.save(os.path.join(store, name), array)
    with pytest.raises(ValueError, match=rule):
        BlockStore.open(store)


def test_short_block_len_is_refused_for_longer_reader_rows(converted, tmp_path):
    store = str(tmp_path / "store")
    shutil.copytree(converted[1], store)
    np.save(os.path.join(store, "num_tokens.npy"), np.full((7,), 50, np.int32))
    with pytest.raises(ValueError, match=r"block_len=\d+ < reader_seq_len - 3 = 61 and some blocks are longer"):
        BlockStore.open(store, reader_seq_len=64)


def test_write_from_our_tokenizer(tmp_path):
    store = BlockStore.write(str(tmp_path / "s"), [t.decode() for t in BLOCKS], load_tokenizer(hf_tokenizer()[1]),
                             reader_seq_len=8)
    assert store.block_len == 5 and int(store.num_tokens[1]) == 6  # "paris is the capital of france": cut at 5
    assert store.token_ids[1].tolist() == [16, 12, 5, 18, 19]
