"""REALM's fresh weights and its checkpoints across classes: ``initializer_range`` sets the scale of every weight
matrix and table (HF's ``_init_weights``), and a pretraining run's checkpoint starts the open-QA model (and the
single-part classes) with the weights REALM fine-tunes from."""

from __future__ import annotations

import warnings

import jax
import numpy as np
import pytest

import jaxmodels
from jaxmodels import hf_io

BASE = dict(model_type="realm", vocab_size=512, hidden_size=32, retriever_proj_size=16, num_hidden_layers=2,
            num_attention_heads=2, intermediate_size=64, max_position_embeddings=64, num_candidates=3,
            span_hidden_size=16, max_span_width=3, reader_beam_size=2, reader_seq_len=48, num_block_records=10,
            searcher_beam_size=4, pad_token_id=0)


def _module(architecture, **fields):
    return jaxmodels.from_config({**BASE, "architectures": [architecture], **fields})


@pytest.mark.parametrize("initializer_range", [0.02, 0.1])
def test_initializer_range_scales_every_matrix_and_table(initializer_range):
    """Every kernel and embedding table is drawn at std ``initializer_range`` (padding row aside), every layer
    norm starts at (1, 0) and every bias at 0: none of the shared layers keeps its own 0.02."""
    params = jaxmodels.init_params(_module("RealmForOpenQA", initializer_range=initializer_range),
                                   jax.random.PRNGKey(0))
    checked = 0
    for path, leaf in hf_io.flatten(params).items():
        name, leaf = "/".join(path), np.asarray(leaf)
        if path[-1] in ("kernel", "embedding"):
            if leaf.size < 256:  # too few draws to estimate a std (the span head's 16 -> 1 output)
                continue
            values = leaf[1:] if path[-2] == "word_embeddings" else leaf  # HF zeroes the padding row
            assert np.std(values) == pytest.approx(initializer_range, rel=0.15), name
            checked += 1
        elif path[-1] == "scale":
            np.testing.assert_array_equal(leaf, 1.0, err_msg=name)
        else:
            np.testing.assert_array_equal(leaf, 0.0, err_msg=name)
    assert checked >= 20


def test_a_pretraining_checkpoint_starts_open_qa(tmp_path):
    """A ``RealmForRetrievalPretraining`` checkpoint read as ``RealmForOpenQA``: the retriever is the embedder, the
    reader is the knowledge-augmented encoder (REALM fine-tunes both from pretraining); only the reader's span head
    and its own (untied) MLM decoder are new."""
    pre = _module("RealmForRetrievalPretraining")
    params = jaxmodels.init_params(pre, jax.random.PRNGKey(1))
    path = str(tmp_path / "pretrained")
    jaxmodels.save_orbax(pre, params, path)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        module, loaded = jaxmodels.from_pretrained(path, overrides={"architectures": ["RealmForOpenQA"]},
                                                   rng=jax.random.PRNGKey(2))
    assert type(module).__name__ == "RealmForOpenQA"
    new = [str(w.message) for w in caught if "newly initialised" in str(w.message)]
    assert len(new) == 1 and "reader/qa_outputs" in new[0] and "embedder" not in new[0] \
        and "reader/realm" not in new[0], new
    stored, got = hf_io.flatten(params), hf_io.flatten(loaded)
    read = 0
    for path_, leaf in got.items():
        source = ("encoder",) + path_[1:] if path_[0] == "reader" else path_
        if source in stored:
            np.testing.assert_array_equal(np.asarray(leaf), np.asarray(stored[source]), err_msg="/".join(path_))
            read += 1
        else:
            assert path_[:2] == ("reader", "qa_outputs") or path_[-2:] == ("decoder", "kernel"), path_
    assert read == len(stored)  # every pretrained weight found its place

    # The single-part classes read their part.
    for architecture, part in (("RealmEmbedder", "embedder"), ("RealmKnowledgeAugEncoder", "encoder"),
                               ("RealmScorer", "embedder")):
        _, one = jaxmodels.from_pretrained(path, overrides={"architectures": [architecture]})
        flat = hf_io.flatten(one)
        for path_, leaf in flat.items():
            inner = path_[1:] if architecture == "RealmScorer" else path_
            np.testing.assert_array_equal(np.asarray(leaf), np.asarray(stored[(part,) + inner]))


def test_renames_only_between_classes_that_share_a_part():
    from jaxmodels.realm import checkpoint_renames

    assert checkpoint_renames("RealmForOpenQA", "RealmForOpenQA") == ()
    assert checkpoint_renames("RealmEmbedder", "RealmKnowledgeAugEncoder") == ()
    assert checkpoint_renames("RealmForRetrievalPretraining", "RealmForOpenQA") == (
        (("embedder",), ("embedder",)), (("reader",), ("encoder",)))
    assert checkpoint_renames("RealmForOpenQA", "RealmReader") == (((), ("reader",)),)
