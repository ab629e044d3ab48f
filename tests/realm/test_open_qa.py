"""RealmForOpenQA against HF, question by question: retrieved block ids, reader rows and answer spans (HF's
``RealmRetriever`` on the same blocks), losses, the predicted span and answer tokens, and gradients; our batched
call answers every question of a batch as HF answers it alone, sharded over 8 devices too, with
``reader_beam_size=1`` (which crashes HF in eval mode), and with no retrieved block holding the answer (loss 0)."""

from __future__ import annotations

import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxmodels
from jaxmodels.realm import BlockStore, RealmForOpenQA, RealmRetriever, load_block_emb, load_tokenizer
from layers.retrieval import RowSharding, pad_rows
from tests.oracle import assert_close, assert_grads_close, require_torch, torch_grads
from tests.realm.cases import BLOCKS, QUESTIONS, _ROOT, hf_tokenizer, pair

OUT_TOL = 1e-5
GRAD_TOL = 1e-4
ANSWERS = [["paris"], ["the cat", "cat"], ["tree"]]  # no block holds "tree": that question's loss is 0


@functools.cache
def store():
    _, saved = hf_tokenizer()
    return BlockStore.write(os.path.join(_ROOT.name, "store"), BLOCKS, load_tokenizer(saved), reader_seq_len=20)


def _batch():
    tok = store().tokenizer
    batch = tok(QUESTIONS, padding=True, return_tensors="np")
    answers = [[tok(a, add_special_tokens=False)["input_ids"] for a in group] for group in ANSWERS]
    padded = np.full((len(answers), 2, 2), -1, np.int32)
    for b, group in enumerate(answers):
        for a, ids in enumerate(group):
            padded[b, a, :len(ids)] = ids
    return batch, answers, padded


@functools.cache
def _run(items: tuple = (), sharded: bool = False):
    """One jitted batched call per (config, layout, mode): ``run(deterministic) -> output``."""
    _, path, module, params = pair("RealmForOpenQA", items)
    emb = load_block_emb(path)
    sharding = None
    blocks = store().tokens()
    if sharded:
        mesh = jax.sharding.Mesh(np.array(jax.devices()[:8]), ("candidates",))
        sharding = RowSharding(mesh, "candidates")
        module = module.clone(index_sharding=sharding)
        rows = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("candidates"))
        emb = jax.device_put(pad_rows(emb, 8), rows)
        blocks = store().tokens(multiple=8, sharding=rows)
    batch, _, answers = _batch()

    @functools.partial(jax.jit, static_argnums=2)
    def call(p, e, deterministic, b):
        return module.apply({"params": p, "buffers": {"block_emb": e}}, jnp.asarray(batch["input_ids"]),
                            jnp.asarray(batch["attention_mask"]), jnp.asarray(batch["token_type_ids"]),
                            jnp.asarray(answers), blocks=b, deterministic=deterministic)

    return lambda deterministic: call(params, emb, deterministic, blocks), module, params, emb, blocks


def _hf_answer(hf, question: str, answers, train: bool):
    """HF's output for one question, and the block ids its retriever was given."""
    torch = require_torch()
    tok, _ = hf_tokenizer()
    seen = []
    retriever = hf.retriever

    def spy(ids, *args, **kwargs):
        seen.append(np.atleast_1d(ids.numpy()))
        return retriever(ids, *args, **kwargs)

    hf.retriever = spy
    hf.train(train)
    try:
        inputs = tok([question], return_tensors="pt")
        with torch.no_grad():
            out = hf(**inputs, answer_ids=answers)
    finally:
        hf.retriever = retriever
        hf.eval()
    return out, seen[0]


@pytest.mark.parametrize("train", [False, True], ids=["eval-top2", "train-top4"])
def test_batch_equals_hf_one_question_at_a_time(train):
    hf = pair("RealmForOpenQA")[0]
    ours = _run()[0](not train)
    _, answers, _ = _batch()
    k = 4 if train else 2
    assert ours.retrieved_block_ids.shape == (3, k)
    for b, question in enumerate(QUESTIONS):
        theirs, ids = _hf_answer(hf, question, answers[b], train)
        np.testing.assert_array_equal(np.asarray(ours.retrieved_block_ids[b]), ids, err_msg=question)
        r = ours.reader_output
        for f in ("block_idx", "start_pos", "end_pos"):
            np.testing.assert_array_equal(np.asarray(getattr(r, f)[b]), getattr(theirs.reader_output, f).numpy(),
                                          err_msg=f"{question}: {f}")
        np.testing.assert_array_equal(np.asarray(r.retriever_correct[b]), theirs.reader_output.retriever_correct)
        for f in ("loss", "retriever_loss", "reader_loss"):
            assert_close(getattr(r, f)[b], getattr(theirs.reader_output, f), OUT_TOL, f"{question}: {f}", floor=1.0)
        span = theirs.predicted_answer_ids.numpy()
        predicted = np.asarray(ours.predicted_answer_ids[b])
        np.testing.assert_array_equal(predicted[:len(span)], span)
        assert (predicted[len(span):] == -1).all()
    assert float(ours.reader_output.loss[2]) == 0.0  # "tree" is in no block


def test_sharded_over_8_devices_equals_unsharded():
    """block_emb (7 rows padded to 8) and the block tokens split by rows over 8 devices: same answers."""
    plain = _run()[0](True)
    sharded = _run(sharded=True)[0](True)
    for a, b in zip(jax.tree.leaves(plain), jax.tree.leaves(sharded)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-6)


def test_gradients_equal_hf_in_training_mode():
    """Loss of the first question (top-4 retrieval): gradients reach the reader and, through the retriever
    logits, the question embedder."""
    torch = require_torch()
    hf = pair("RealmForOpenQA")[0]
    _, module, params, emb, blocks = _run()
    tok, _ = hf_tokenizer()
    batch, answers, padded = _batch()
    hf.train()
    hf.zero_grad()
    try:
        hf(**tok([QUESTIONS[0]], return_tensors="pt"), answer_ids=answers[0]).reader_output.loss.backward()
    finally:
        hf.eval()

    def loss(p):
        out = module.apply({"params": p, "buffers": {"block_emb": emb}}, jnp.asarray(batch["input_ids"][:1, :5]),
                           jnp.asarray(batch["attention_mask"][:1, :5]), jnp.asarray(batch["token_type_ids"][:1, :5]),
                           jnp.asarray(padded[:1]), blocks=blocks, deterministic=False)
        return out.reader_output.loss[0]

    grads = jax.jit(jax.grad(loss))(params)
    theirs = torch_grads(hf)
    assert any(k.startswith("embedder.") for k in theirs) and any(k.startswith("reader.") for k in theirs)
    assert_grads_close(jaxmodels.params_to_hf(module, grads), theirs, GRAD_TOL)


@pytest.mark.parametrize("max_length", [8, 12, 20])
def test_reader_rows_equal_hf_retriever(max_length):
    """Rows [CLS] q [SEP] block [SEP] with longest_first truncation, block masks and answer positions (HF pads to
    the longest row, ours to max_length: the first HF-length positions are equal, the rest padding)."""
    from transformers.models.deprecated.realm.retrieval_realm import RealmRetriever as HFRetriever

    tok, _ = hf_tokenizer()
    ids = np.array([1, 5, 0, 6, 2, 4, 3])
    question = tok(["where is the capital of france the city of paris"], return_tensors="pt")["input_ids"]
    answers = [tok.encode(a, add_special_tokens=False) for a in ("paris", "the", "is the")]
    has, start, end, concat = HFRetriever(np.array(BLOCKS, dtype=object), tok)(
        ids, question, answers, max_length=max_length)
    o_has, o_start, o_end, rows = RealmRetriever(store())(ids, question.numpy(), answers, max_length=max_length)
    np.testing.assert_array_equal(o_has, has)
    np.testing.assert_array_equal(o_start, np.asarray(start).reshape(len(ids), -1))
    np.testing.assert_array_equal(o_end, np.asarray(end).reshape(len(ids), -1))
    width = concat["input_ids"].shape[1]
    for name in ("input_ids", "token_type_ids", "attention_mask"):
        np.testing.assert_array_equal(getattr(rows, name)[:, :width], concat[name].numpy(), err_msg=name)
        assert (getattr(rows, name)[:, width:] == 0).all()
    block_mask = (concat["special_tokens_mask"] == 0).numpy() & (concat["token_type_ids"] == 1).numpy()
    np.testing.assert_array_equal(rows.block_mask[:, :width], block_mask)


def test_reader_beam_size_one():
    """HF crashes in eval with reader_beam_size=1; ours reads the one block. Its span is HF's in training mode
    (top-4 retrieved, the first read), and our training-mode losses are HF's."""
    items = (("reader_beam_size", 1),)
    hf = pair("RealmForOpenQA", items)[0]
    run = _run(items)[0]
    evaluated, trained = run(True), run(False)
    assert evaluated.retrieved_block_ids.shape == (3, 1)
    _, answers, _ = _batch()
    for b, question in enumerate(QUESTIONS):
        theirs, _ = _hf_answer(hf, question, answers[b], train=True)
        for out in (evaluated, trained):
            assert int(out.reader_output.block_idx[b]) == 0
            np.testing.assert_array_equal(np.asarray(out.reader_output.start_pos[b]), theirs.reader_output.start_pos)
        assert_close(trained.reader_output.loss[b], theirs.reader_output.loss, OUT_TOL, "loss", floor=1.0)
