"""REALM parity with the HF PyTorch oracle (transformers 4.46.3, models/deprecated/realm), fp32: outputs of every
class and parameter gradients, on the spec's tiny cases (toy vocabulary, random non-default weights; the scorer,
reader and open-QA checkpoints are HF's ``pytorch_model.bin``, which HF alone can write for them).

Errors measured on 2026-12-05 (relative to the largest oracle value): outputs 1.5e-7 to 6.5e-7, gradients 1.3e-6 to
6.1e-6 (the 3-layer encoder with mlm_mask); the budgets are 1e-5 and 1e-4 as for the other families."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxmodels
from tests.oracle import assert_close, assert_grads_close, require_torch, torch_grads
from tests.realm.cases import V, bert_ids, pair

OUT_TOL = 1e-5
GRAD_TOL = 1e-4


def _torch(inputs):
    torch = require_torch()
    return {k: torch.tensor(v) if isinstance(v, np.ndarray) else v for k, v in inputs.items()}


def _compare(hf_model, module, params, inputs, objective_hf, objective_ours, **flags):
    """One jitted call for our outputs and the gradients of a scalar objective of them; HF's outputs (with
    ``flags``) and gradients of the same objective. Returns ``(ours, theirs)`` after comparing the gradients."""
    jin = {k: jnp.asarray(v) for k, v in inputs.items()}

    def objective(p):
        out = module.apply({"params": p}, **jin, **flags)
        return objective_ours(out), out

    (_, ours), grads = jax.jit(jax.value_and_grad(objective, has_aux=True))(params)
    hf_model.zero_grad()
    theirs = hf_model(**_torch(inputs), **flags)
    objective_hf(theirs).backward()
    assert_grads_close(jaxmodels.params_to_hf(module, grads), torch_grads(hf_model), GRAD_TOL)
    return ours, theirs


def test_embedder():
    """Pooler -> Dense(H -> P) -> LayerNorm(P), no activation; padded batch of 3; hidden states and attentions."""
    torch = require_torch()
    hf, _, module, params = pair("RealmEmbedder")
    ids, mask = bert_ids(np.random.RandomState(8), 3, 9, pad_tail=(0, 3, 1))
    inputs = dict(input_ids=ids, attention_mask=mask)
    probe = np.random.RandomState(3).randn(3, 8).astype(np.float32)
    ours, theirs = _compare(hf, module, params, inputs, lambda o: (o.projected_score * torch.tensor(probe)).sum(),
                            lambda o: jnp.sum(o.projected_score * probe), output_hidden_states=True,
                            output_attentions=True)
    assert_close(ours.projected_score, theirs.projected_score, OUT_TOL, "projected_score")
    for name in ("hidden_states", "attentions"):
        assert len(getattr(ours, name)) == len(getattr(theirs, name))
        for i, (a, b) in enumerate(zip(getattr(ours, name), getattr(theirs, name))):
            assert_close(a, b, OUT_TOL, f"{name}[{i}]")


def test_scorer():
    """One embedder for queries and candidates (HF's query_embedder is it); candidates [B, C, Lc] flattened and
    reshaped with config.num_candidates; relevance = einsum(bd, bnd)."""
    torch = require_torch()
    hf, _, module, params = pair("RealmScorer")
    rs = np.random.RandomState(9)
    q, qm = bert_ids(rs, 2, 7, pad_tail=(0, 2))
    c, cm = bert_ids(rs, 6, 6, pad_tail=(0, 1, 0, 2, 0, 0))
    inputs = dict(input_ids=q, attention_mask=qm, candidate_input_ids=c.reshape(2, 3, 6),
                  candidate_attention_mask=cm.reshape(2, 3, 6))
    probe = rs.randn(2, 3).astype(np.float32)
    ours, theirs = _compare(hf, module, params, inputs, lambda o: (o.relevance_score * torch.tensor(probe)).sum(),
                            lambda o: jnp.sum(o.relevance_score * probe))
    for f in ("relevance_score", "query_score", "candidate_score"):
        assert_close(getattr(ours, f), getattr(theirs, f), OUT_TOL, f)


@pytest.mark.parametrize("masked", [False, True], ids=["all-positions-denominator", "mlm_mask"])
def test_knowledge_augmented_encoder(masked):
    """Logits [B*C, L, V] from the tied head; marginal loss over candidates; without mlm_mask the denominator
    counts every position (HF), with it the labelled ones (C=2 and 3 layers there)."""
    items = (("num_candidates", 2), ("num_hidden_layers", 3)) if masked else ()
    hf, _, module, params = pair("RealmKnowledgeAugEncoder", items)
    rs = np.random.RandomState(10)
    c = 2 if masked else 3
    x, m = bert_ids(rs, 2 * c, 9, pad_tail=(0, 2) * c)
    labels = np.full((2, 9), -100, np.int64)
    labels[0, [2, 5]] = rs.randint(5, V, 2)
    labels[1, 3] = 7
    inputs = dict(input_ids=x.reshape(2, c, 9), attention_mask=m.reshape(2, c, 9),
                  relevance_score=rs.randn(2, c).astype(np.float32), labels=labels)
    if masked:
        inputs["mlm_mask"] = (labels != -100).astype(np.int64)
    ours, theirs = _compare(hf, module, params, inputs, lambda o: o.loss, lambda o: o.loss)
    assert ours.logits.shape == (2 * c, 9, V)
    assert_close(ours.logits, theirs.logits, OUT_TOL, "logits")
    assert_close(ours.loss, theirs.loss, OUT_TOL, "loss")
    if masked:
        # mlm_prefix (ours, REALM pretraining): the first 6 positions predicted, every label among them: HF's loss
        # and logits of those positions, and the gradients of the whole-row loss (which equal HF's, above).
        full = {k: jnp.asarray(v) for k, v in inputs.items()}
        prefix = {**full, "labels": full["labels"][:, :6], "mlm_mask": full["mlm_mask"][:, :6]}
        loss = lambda p, x, **kw: module.apply({"params": p}, **x, **kw).loss  # noqa: E731
        short = module.apply({"params": params}, **prefix, mlm_prefix=6)
        assert short.logits.shape == (2 * c, 6, V)
        assert_close(short.logits, theirs.logits[:, :6], OUT_TOL, "prefix logits")
        assert_close(short.loss, theirs.loss, OUT_TOL, "prefix loss")
        got = jax.jit(jax.grad(lambda p: loss(p, prefix, mlm_prefix=6)))(params)
        want = jax.jit(jax.grad(lambda p: loss(p, full)))(params)
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), got, want)
        with pytest.raises(ValueError, match="mlm_prefix=10"):
            module.apply({"params": params}, **prefix, mlm_prefix=10)


def _reader_inputs(no_answer: bool):
    rs = np.random.RandomState(11)
    x, m = bert_ids(rs, 2, 12)
    tt = np.zeros_like(x)
    tt[:, 5:] = 1
    x[:, 4] = 3
    bm = np.zeros((4, 12), bool)
    bm[:, 5:11] = True
    sp = np.array([[6, -1], [7, 8], [-1, -1], [9, -1]])
    ep = np.array([[7, -1], [7, 9], [-1, -1], [10, -1]])
    has = np.array([True, True, False, True])
    if no_answer:
        sp[:], ep[:], has[:] = -1, -1, False
    return dict(input_ids=x, attention_mask=m, token_type_ids=tt, relevance_score=rs.randn(4).astype(np.float32),
                block_mask=bm, start_positions=sp, end_positions=ep, has_answers=has)


@pytest.mark.parametrize("no_answer", [False, True], ids=["answers", "no-correct-block"])
def test_reader(no_answer):
    """Width-major spans, 2-D gold positions, S=4 searched blocks vs R=2 read rows; with no correct block both
    marginal losses are exactly 0 (and their gradients 0, not NaN)."""
    items = (("max_span_width", 2),) if no_answer else ()
    hf, _, module, params = pair("RealmReader", items)
    inputs = _reader_inputs(no_answer)
    if no_answer:  # HF's loss is 0 times a finite number: its gradients are zeros; ours must be exactly that
        jin = {k: jnp.asarray(v) for k, v in inputs.items()}
        (_, ours), grads = jax.jit(jax.value_and_grad(
            lambda p: (lambda o: (o.loss, o))(module.apply({"params": p}, **jin)), has_aux=True))(params)
        assert all(np.all(np.asarray(g) == 0) for g in jax.tree.leaves(grads))
        theirs = hf(**_torch(inputs))
    else:
        ours, theirs = _compare(hf, module, params, inputs, lambda o: o.loss, lambda o: o.loss)
    for f in ("block_idx", "candidate", "start_pos", "end_pos", "retriever_correct", "reader_correct"):
        np.testing.assert_array_equal(np.asarray(getattr(ours, f)), getattr(theirs, f).numpy(), err_msg=f)
    for f in ("loss", "retriever_loss", "reader_loss"):
        assert_close(getattr(ours, f), getattr(theirs, f), OUT_TOL, f, floor=1.0)
    if no_answer:
        assert float(ours.loss) == 0.0 == float(theirs.loss.detach())


@pytest.mark.parametrize("cls", ["RealmScorer", "RealmReader", "RealmForOpenQA"])
def test_our_safetensors_load_in_hf(cls, tmp_path):
    """The classes HF can save only as pytorch_model.bin: ours write safetensors with every alias HF's loader needs
    (the scorer's two embedder names, the heads' two bias names, block_emb beside the params), which HF loads
    into the same tensors, and which load back here to the same params."""
    torch = require_torch()
    import transformers

    from jaxmodels.realm import load_block_emb, save_open_qa_pretrained

    hf, path, module, params = pair(cls)
    out = str(tmp_path / "ours")
    if cls == "RealmForOpenQA":
        save_open_qa_pretrained(module, params, load_block_emb(path), out)
        np.testing.assert_array_equal(load_block_emb(out), hf.block_emb.numpy())
    else:
        jaxmodels.save_pretrained(module, params, out)
    reloaded = getattr(transformers, cls).from_pretrained(out)
    theirs = dict(hf.state_dict())
    for name, tensor in reloaded.state_dict().items():
        assert torch.equal(tensor, theirs[name]), name
    module2, params2 = jaxmodels.from_pretrained(out)
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)), params, params2)
