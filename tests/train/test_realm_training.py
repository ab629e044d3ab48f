"""REALM training pieces: the retrieval corpus (blocks in the REALM block store, salient spans, the synthetic
open-QA set), the objectives' building blocks against plain twins, gradients of the pretraining loss into both
the retriever and the encoder, and the index refresh equal to embedding each block alone."""

import functools

import numpy as np
import pytest

import jax
import jax.numpy as jnp

import jaxmodels
from train import objectives
from train.data.retrieval_corpus import (CLS, MASK, PAD, SEP, ExampleBatches, RetrievalCorpus, RetrievalCorpusSpec,
                                         salient_words)

# These tiny programs cost their compile, not their run: XLA's lowest backend optimisation level compiles them
# 2-3x faster (the values are the same ops; every comparison here is to a twin computed alike or in numpy).
_jit = functools.partial(jax.jit, compiler_options={"xla_backend_optimization_level": 0})

SPEC = RetrievalCorpusSpec(block_tokens=32, vocab_size=256, max_documents=3, query_len=32)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return RetrievalCorpus.build(SPEC, str(tmp_path_factory.mktemp("retrieval_corpus")), jaxmodels.family("realm"))


def _tiny(architecture, n_blocks, **extra):
    return jaxmodels.from_config(dict(
        model_type="realm", architectures=[architecture], vocab_size=256, hidden_size=16, retriever_proj_size=8,
        num_hidden_layers=1, num_attention_heads=2, intermediate_size=32, hidden_act="gelu_new",
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, max_position_embeddings=72, num_candidates=3,
        span_hidden_size=8, max_span_width=3, reader_beam_size=2, reader_seq_len=64, num_block_records=n_blocks,
        searcher_beam_size=4, pad_token_id=0, **extra))


def test_salient_words_are_capitalised_words_and_numbers_after_the_first():
    got = salient_words("And Noah begat Shem, Ham, and Japheth in 500 years")
    words = ["Noah", "Shem", "Ham", "Japheth", "500"]
    text = "And Noah begat Shem, Ham, and Japheth in 500 years"
    assert [text[a:b] for a, b, _ in got] == words
    assert [s for *_, s in got] == [1, 2, 3, 4, 5]  # commas and lower-case words end a span
    assert [s for *_, s in salient_words("Then Simon Peter said")] == [1, 1]  # adjacent capitals: one span
    assert salient_words("the end") == []


def test_corpus_blocks_sentences_and_questions(corpus):
    store, tok = corpus.store, corpus.tokenizer
    assert len(store) == corpus.meta["num_blocks"] > 3
    assert int(np.max(store.num_tokens)) <= SPEC.block_tokens or store.block_len == SPEC.block_tokens
    s = corpus.sentences
    assert s["inputs"].shape[1] == SPEC.query_len and (s["inputs"][:, 0] == CLS).all()
    for row, spans, block in zip(s["inputs"][:20], s["salient_spans"][:20], s["source_block"][:20]):
        ids = [int(t) for t in row if t != PAD]
        assert ids[-1] == SEP and spans.max() >= 1 and (spans[row == PAD] == 0).all()
        # The sentence lies in its source block.
        text = tok.decode(ids[1:-1])
        block_text = tok.decode(list(store.token_ids[block][:store.num_tokens[block]]))
        assert text.replace(" ", "") in block_text.replace(" ", "")
    for split in ("train", "validation"):
        q = corpus.questions(split)
        assert len(q["inputs"]) == len(q["answers"]) == len(q["answer_block"])
        for answer, block in zip(q["answers"][:, 0], q["answer_block"]):
            answer = [int(a) for a in answer if a >= 0]
            holders = [b for b in range(len(store)) if _contains(store.token_ids[b][:store.num_tokens[b]], answer)]
            assert holders == [block]  # the answer occurs in exactly one block
    assert len(corpus.questions("train")["inputs"]) + len(corpus.questions("validation")["inputs"]) > 0
    again = RetrievalCorpus.build(SPEC, corpus.path.rsplit("/", 1)[0], jaxmodels.family("realm"))
    assert again.identity == corpus.identity  # cached


def _contains(row, needle):
    row = list(row)
    return any(row[i:i + len(needle)] == needle for i in range(len(row) - len(needle) + 1))


def test_example_batches_resume_exactly(corpus):
    a = ExampleBatches(corpus.sentences, global_batch_size=5, seed=3)
    for _ in range(7):
        next(a)
    state = a.get_state()
    expected = [next(a) for _ in range(4)]
    b = ExampleBatches(corpus.sentences, global_batch_size=5, seed=3)
    b.set_state(state)
    for want in expected:
        got = next(b)
        assert all((got[k] == want[k]).all() for k in want)
    with pytest.raises(ValueError, match="another dataset"):
        ExampleBatches(corpus.sentences, global_batch_size=5, seed=4).set_state(state)


def test_pick_salient_span_masks_one_whole_span():
    spans = jnp.asarray([[0, 1, 1, 0, 2, 0], [0, 0, 0, 0, 0, 0], [0, 3, 1, 2, 2, 0]])
    for seed in range(10):
        mask = np.asarray(objectives.pick_salient_span(jax.random.PRNGKey(seed), spans))
        assert mask[0].tolist() in ([0, 1, 1, 0, 0, 0], [0, 0, 0, 0, 1, 0])
        assert not mask[1].any()
        chosen = set(np.asarray(spans)[2][mask[2]].tolist())
        assert len(chosen) == 1 and (np.asarray(spans)[2] == chosen.pop()).sum() == mask[2].sum()


def test_exclude_and_keep_drops_the_source_block_keeping_order():
    ids = jnp.asarray([[5, 2, 9], [4, 7, 1]])
    got, scores = objectives.exclude_and_keep(ids, -ids.astype(float), jnp.asarray([2, 3]), 2)
    assert got.tolist() == [[5, 9], [4, 7]] and scores.tolist() == [[-5, -9], [-4, -7]]


def test_block_rows_frame_each_block(corpus):
    blocks = corpus.store.tokens()
    ids = jnp.asarray([[0, 1], [2, 0]])
    assert (blocks.cls_token_id, blocks.sep_token_id, blocks.pad_token_id) == (CLS, SEP, PAD)
    rows, mask = blocks.rows(ids)
    width = corpus.store.block_len
    for (b, k), block in np.ndenumerate(np.asarray(ids)):
        n = min(int(corpus.store.num_tokens[block]), width)
        want = [CLS] + list(corpus.store.token_ids[block][:n]) + [SEP] + [PAD] * (width - n)
        assert rows[b, k].tolist() == want and mask[b, k].tolist() == [1] * (n + 2) + [0] * (width - n)


def test_pretraining_loss_reaches_retriever_and_encoder(corpus):
    n = len(corpus.store)
    module = _tiny("RealmForRetrievalPretraining", n)
    params = jaxmodels.init_params(module, jax.random.PRNGKey(0))
    objective = objectives.get_objective({"name": "realm_pretrain", "ict_weight": 0.5, "mask_token_id": MASK,
                                          "embed_chunk": 4})
    blocks = corpus.store.tokens(multiple=4)
    index = _jit(lambda p: objective.embed_blocks(module, p, blocks))(params)
    # The refresh equals embedding each block by itself.
    one = objective.embed(module, params, *blocks.rows(jnp.asarray([3])),
                          jax.random.PRNGKey(0), True)
    np.testing.assert_allclose(index[3], one[0], rtol=1e-5, atol=1e-5)
    batch = {k: jnp.asarray(v[:4]) for k, v in corpus.sentences.items()}
    (loss, metrics), grads = _jit(jax.value_and_grad(
        lambda p: objective(module, p, batch, jax.random.PRNGKey(1), deterministic=True, index=index, blocks=blocks),
        has_aux=True))(params)
    assert np.isfinite(float(loss)) and float(loss) > 0
    assert {"mlm_accuracy", "null_block_probability", "ict_loss", "retrieval_entropy"} <= set(metrics)
    norm = lambda tree: float(sum(jnp.sum(jnp.abs(x)) for x in jax.tree.leaves(tree)))  # noqa: E731
    assert norm(grads["embedder"]) > 0 and norm(grads["encoder"]) > 0
    # Without ICT the retriever still gets gradient: through the marginal over the retrieved blocks.
    plain = objectives.get_objective({"name": "realm_pretrain", "mask_token_id": MASK, "embed_chunk": 4})
    grads = _jit(jax.grad(lambda p: plain(module, p, batch, jax.random.PRNGKey(1), deterministic=True,
                                             index=index, blocks=blocks)[0]))(params)
    assert norm(grads["embedder"]) > 0 and norm(grads["encoder"]) > 0


def test_open_qa_objective_metrics(corpus):
    n = len(corpus.store)
    module = _tiny("RealmForOpenQA", n)
    params = jaxmodels.init_params(module, jax.random.PRNGKey(0))
    objective = objectives.get_objective({"name": "realm_openqa", "beam_size": 4, "embed_chunk": 4})
    blocks = corpus.store.tokens(multiple=4)
    index = _jit(lambda p: objective.embed_blocks(module, p, blocks))(params)
    q = corpus.questions("train")
    batch = {k: jnp.asarray(v[:2]) for k, v in q.items()}
    (loss, metrics), grads = _jit(jax.value_and_grad(
        lambda p: objective(module, p, batch, jax.random.PRNGKey(1), deterministic=True, index=index, blocks=blocks),
        has_aux=True))(params)
    assert np.isfinite(float(loss))
    for key in ("recall@1", "recall@5", "recall@beam", "exact_match"):
        assert 0 <= float(metrics[key]) <= 1
    assert float(metrics["recall@1"]) <= float(metrics["recall@5"]) <= float(metrics["recall@beam"]) or \
        objective.beam_size < 5
    assert float(metrics["loss"]) == pytest.approx(float(metrics["retriever_loss"] + metrics["reader_loss"]), abs=1e-5)
    # The objective rescores the retrieved blocks with the current embedder (rescore_blocks, REALM's fresh p(z|x)):
    # on an index just embedded by the same params that is HF's loss from the index rows, but the gradient also
    # reaches the block side of the shared embedder (the index rows are constants).
    # The whole index as the beam, so the answer block is among the scored ones and the retriever loss is not 0.
    assert objective.rescore_blocks

    def loss_and_grads(rescore):
        obj = objectives.get_objective({"name": "realm_openqa", "beam_size": n, "rescore_blocks": rescore})
        return _jit(jax.value_and_grad(lambda p: obj(module, p, batch, jax.random.PRNGKey(1), deterministic=True,
                                                        index=index, blocks=blocks), has_aux=True))(params)

    (fresh, fresh_metrics), fresh_grads = loss_and_grads(True)
    (stale, _), stale_grads = loss_and_grads(False)
    assert float(fresh_metrics["retriever_loss"]) > 0
    assert float(fresh) == pytest.approx(float(stale), rel=1e-5, abs=1e-5)
    diff = jax.tree.map(lambda a, b: float(jnp.max(jnp.abs(a - b))), fresh_grads["embedder"], stale_grads["embedder"])
    assert max(jax.tree.leaves(diff)) > 1e-6


def test_sharded_retrieval_equals_one_device(corpus):
    """The index and the store split over 4 devices (search and gather shard by shard): the same loss."""
    import dataclasses

    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

    n = len(corpus.store)
    module = _tiny("RealmForRetrievalPretraining", n)
    params = jaxmodels.init_params(module, jax.random.PRNGKey(0))
    objective = objectives.get_objective({"name": "realm_pretrain", "mask_token_id": MASK, "embed_chunk": 4})
    mesh = Mesh(np.asarray(jax.devices()[:4]), ("data",))
    blocks = corpus.store.tokens(multiple=4)
    index = _jit(lambda p: objective.embed_blocks(module, p, blocks))(params)
    batch = {k: jnp.asarray(v[:4]) for k, v in corpus.sentences.items()}
    run = lambda obj, idx, blk: _jit(lambda p: obj(module, p, batch, jax.random.PRNGKey(1), deterministic=True,  # noqa: E731
                                                       index=idx, blocks=blk)[0])(params)
    rows = NamedSharding(mesh, P("data"))
    sharded_blocks = corpus.store.tokens(multiple=4, sharding=rows)
    sharded_index = jax.device_put(index, NamedSharding(mesh, P("data", None)))
    sharded = dataclasses.replace(objective, index_mesh=mesh)
    np.testing.assert_allclose(run(sharded, sharded_index, sharded_blocks), run(objective, index, blocks), rtol=1e-5)


def test_blocks_holding_an_answer_equal_a_plain_search(corpus):
    """Every block searched for every answer: a match lies wholly inside the block's tokens; an all -1 answer
    matches nothing; answers of different lengths (-1 padded) in one batch."""
    blocks = corpus.store.tokens(multiple=4)
    q = corpus.questions("train")
    answers = np.array(q["answers"][:5])
    answers[1, 0, 1:] = -1  # a one-token answer (its first piece): found in many blocks
    answers[2, 0, :] = -1  # no answer
    # A block's last tokens as an answer: found there (and only where it fits).
    tail = np.asarray(blocks.token_ids[7, int(blocks.num_tokens[7]) - 2:int(blocks.num_tokens[7])])
    answers[3, 0, :] = -1
    answers[3, 0, :2] = tail
    got = np.asarray(_jit(lambda b, a: b.holding(a))(blocks, jnp.asarray(answers)))
    tokens, counts = np.asarray(blocks.token_ids), np.minimum(np.asarray(blocks.num_tokens), blocks.token_ids.shape[1])
    want = np.zeros_like(got)
    for b in range(len(answers)):
        for a in answers[b]:
            a = [t for t in a if t >= 0]
            if not a:
                continue
            for n in range(len(tokens)):
                row = tokens[n, :counts[n]].tolist()
                want[b, n] |= any(row[p:p + len(a)] == a for p in range(len(row) - len(a) + 1))
    np.testing.assert_array_equal(got, want)
    assert want[0].sum() == 1 and want[0, q["answer_block"][0]]  # a question's answer lies in one block
    assert want[1].sum() > 1 and not want[2].any() and want[3, 7]


def test_index_retriever_loss_is_the_marginal_over_every_block(corpus):
    """`retriever_loss="index"`: -log of the softmax mass, over the whole index, of the blocks holding an answer;
    with a one-block beam that misses the answer block, REALM's beam term is 0 with no retriever gradient, while
    this one still pulls the question towards its answer block."""
    n = len(corpus.store)
    module = _tiny("RealmForOpenQA", n)
    params = jaxmodels.init_params(module, jax.random.PRNGKey(0))
    blocks = corpus.store.tokens(multiple=4)
    q = corpus.questions("train")
    beam = objectives.get_objective({"name": "realm_openqa", "beam_size": 1, "embed_chunk": 4})
    index = _jit(lambda p: beam.embed_blocks(module, p, blocks))(params)
    top = np.argmax(np.asarray(beam.embed(module, params, jnp.asarray(q["inputs"]), jnp.asarray(q["inputs"] != PAD),
                                          jax.random.PRNGKey(0), True)) @ np.asarray(index[:n]).T, axis=1)
    missed = np.flatnonzero(top != q["answer_block"])[:2]  # questions whose top block is not the answer's
    assert len(missed) == 2
    batch = {k: jnp.asarray(v[missed]) for k, v in q.items()}
    whole = objectives.get_objective({"name": "realm_openqa", "beam_size": 1, "embed_chunk": 4,
                                      "retriever_loss": "index"})

    def run(obj):
        return _jit(jax.value_and_grad(lambda p: obj(module, p, batch, jax.random.PRNGKey(1), deterministic=True,
                                                        index=index[:n], blocks=blocks), has_aux=True))(params)

    (_, beam_metrics), beam_grads = run(beam)
    (loss, metrics), grads = run(whole)
    assert float(beam_metrics["retriever_loss"]) == 0.0
    question = np.asarray(whole.embed(module, params, batch["inputs"], (batch["inputs"] != PAD).astype(jnp.int32),
                                      jax.random.PRNGKey(0), True), np.float64)
    scores = question @ np.asarray(index[:n], np.float64).T
    holds = np.asarray(blocks.holding(batch["answers"]))[:, :n]
    top_ = scores.max(1, keepdims=True)
    log_total = np.log(np.exp(scores - top_).sum(1))
    log_good = np.log((np.exp(scores - top_) * holds).sum(1))
    np.testing.assert_allclose(float(metrics["retriever_loss"]), np.mean(log_total - log_good), rtol=1e-5)
    assert float(loss) == pytest.approx(float(metrics["retriever_loss"] + metrics["reader_loss"]), rel=1e-6)
    norm = lambda tree: float(sum(jnp.sum(jnp.abs(x)) for x in jax.tree.leaves(tree)))  # noqa: E731
    # The beam term gives the embedder nothing on these questions (the reader part still may, through the
    # relevance of the one block it reads); the index term gives it more.
    assert norm(grads["embedder"]) > norm(beam_grads["embedder"]) + 1e-6
