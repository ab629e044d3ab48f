"""Laws every model keeps on every input, for every family and head of the registry (tiny random configs from
``tests/families.py``, fp32, ``highest`` matmul precision), each a hypothesis property over random ids and masks:

- padding: changing the ids under ``attention_mask == 0`` changes no output at a real position (pooled, span and
  choice outputs included);
- causality (heads a family entry names ``causal``): changing tokens after position t changes no output <= t;
- batch independence: a row's outputs do not depend on the other rows (Reformer LSH too, with fixed rotations);
- jit == eager, and a sharded mesh (8 simulated devices: data=4 x tensor=2, params by the default logical rules)
  equals one device;
- bf16 compute stays within ``BF16_BOUND`` of fp32 and finite; gradients are finite with nearly-empty rows;
- ``save_pretrained`` -> ``from_pretrained`` is the identity on params and outputs.

Compile budget: every case has one shape (batch 4, length 12), so the padding, batch, causality and round-trip
examples share one jitted apply per case (``functools.cache``); the mesh, bf16 and gradient laws compile once
more each. A new family is covered by adding its entry to ``tests/families.py``; a case that legitimately breaks a
law lists it under ``breaks`` with the reason, and the narrower law it keeps is checked instead.
"""

from __future__ import annotations

import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jax.sharding import NamedSharding, PartitionSpec

import jaxmodels
from jaxmodels import registry, sharding
from tests.families import MODEL_FAMILIES
from train import partitioning
from tests.profiles import examples

BATCH, CHOICES, LENGTH = 4, 2, 12
ATOL = 1e-5          # fp32: the same program on other inputs / placements; only summation order may differ
# bf16 keeps 8 mantissa bits (relative step 2**-8 = 0.4%); through the tiny 1-2 layer models the error compounds
# to a few percent of an output's scale, which is what this bound allows.
BF16_BOUND = 5e-2


@dataclasses.dataclass(frozen=True)
class Case:
    family: str
    architecture: str
    label: str = ""
    overrides: tuple = ()
    causal: bool = False
    breaks: tuple = ()

    @property
    def id(self) -> str:
        return f"{self.family}-{self.architecture}" + (f"-{self.label}" if self.label else "")


def _hashable(value):
    return tuple(value) if isinstance(value, list) else value


def _cases():
    out = []
    for name, entry in sorted(MODEL_FAMILIES.items()):
        family = registry.get(entry["config"]["model_type"])
        for arch in family.architectures:
            causal = entry.get("causal", {}).get(arch)
            case = Case(name, arch, overrides=tuple(sorted((causal or {}).items())), causal=causal is not None,
                        breaks=tuple(sorted(entry.get("breaks", {}).get(arch, {}).items())))
            reason = entry.get("skip", {}).get(arch)
            out.append(pytest.param(case, id=case.id, marks=[pytest.mark.skip(reason=reason)] if reason else []))
        for label, extra in entry.get("extra", {}).items():
            case = Case(name, extra["architecture"], label,
                        tuple(sorted((k, _hashable(v)) for k, v in extra["config"].items())),
                        breaks=tuple(sorted(extra.get("breaks", {}).items())))
            out.append(pytest.param(case, id=case.id))
    return out


CASES = _cases()


def test_every_registered_family_has_a_law_entry():
    """A family landing in the registry without a tests/families.py entry would silently skip every law."""
    covered = {entry["config"]["model_type"] for entry in MODEL_FAMILIES.values()}
    assert set(registry.model_types()) <= covered, sorted(set(registry.model_types()) - covered)


# ------------------------------------------------------------------------------------------------------------
# Models, inputs and compiled applies, shared by every law and example of a case
def _hf_config(case: Case) -> dict:
    overrides = {k: list(v) if isinstance(v, tuple) else v for k, v in case.overrides}
    config = {**MODEL_FAMILIES[case.family]["config"], **overrides}
    return {**config, "architectures": [case.architecture]}


def _module(case: Case, **kwargs):
    """The case's module, with the family entry's ``module_fields`` for its head (static fields a jitted call
    needs, such as Longformer's ``max_global_tokens``)."""
    module = jaxmodels.from_config(_hf_config(case), **kwargs)
    fields = MODEL_FAMILIES[case.family].get("module_fields", {}).get(case.architecture)
    return module.clone(**fields) if fields else module


@functools.cache
def _model(case: Case, dtype_name: str = "float32"):
    module = _module(case, dtype=jnp.dtype(dtype_name))
    params = _params(case)
    return module, params


@functools.cache
def _params(case: Case):
    """Random params from the abstract tree (a traced, never compiled init) filled by numpy: a jitted init costs
    seconds of threefry compile per head, and the laws hold for any params. Norm scales near 1, the rest N(0, 0.2)."""
    module = _module(case)
    rng = np.random.default_rng(0)

    def fill(path, leaf):
        x = rng.standard_normal(leaf.shape)
        name = getattr(path[-1], "key", "")
        return jnp.asarray(1.0 + 0.1 * x if name == "scale" else 0.2 * x, leaf.dtype)

    return jax.tree_util.tree_map_with_path(fill, jaxmodels.abstract_params(module))


def _apply(module):
    return lambda params, inputs: module.apply({"params": params}, **inputs, deterministic=True)


@functools.cache
def _jitted(case: Case, dtype_name: str = "float32"):
    return jax.jit(_apply(_model(case, dtype_name)[0]))


def _spec(case: Case) -> dict:
    entry = MODEL_FAMILIES[case.family]
    if case.architecture in entry.get("inputs", {}):
        return entry["inputs"][case.architecture]
    return {"input_ids": "choices" if case.architecture.endswith("ForMultipleChoice") else "tokens"}


def _shape(case: Case, kind: str) -> tuple:
    candidates = MODEL_FAMILIES[case.family]["config"].get("num_candidates")
    return {"tokens": (BATCH, LENGTH), "choices": (BATCH, CHOICES, LENGTH),
            "candidates": (BATCH, candidates, LENGTH), "candidate_scores": (BATCH, candidates)}[kind]


def _mask_name(arg: str) -> str:
    return arg.replace("input_ids", "attention_mask")


def _inputs(case: Case, rng: np.random.Generator, *, full: bool = False, sparse_row: bool = False) -> dict:
    """Random ids and masks: each row keeps its first token, the others are real with probability 0.6 (all real
    if ``full``; with ``sparse_row`` row 0 keeps only its first token)."""
    vocab = MODEL_FAMILIES[case.family]["config"]["vocab_size"]
    out = {}
    for arg, kind in _spec(case).items():
        shape = _shape(case, kind)
        if kind == "candidate_scores":
            out[arg] = rng.standard_normal(shape).astype(np.float32)
            continue
        mask = np.ones(shape, np.int32) if full else (rng.random(shape) < 0.6).astype(np.int32)
        mask[..., 0] = 1
        if sparse_row:
            mask[0, ..., 1:] = 0
        out[arg] = rng.integers(0, vocab, shape).astype(np.int32)
        out[_mask_name(arg)] = mask
    return out


def _leaves(outputs) -> dict:
    leaves, _ = jax.tree_util.tree_flatten_with_path(jax.device_get(outputs))
    return {jax.tree_util.keystr(path): np.asarray(leaf) for path, leaf in leaves
            if np.issubdtype(np.asarray(leaf).dtype, np.inexact)}


def _positions(leaf: np.ndarray, inputs: dict) -> np.ndarray | None:
    """Where a leaf holds per-token outputs, the mask of its real tokens broadcast to the leaf; None otherwise."""
    for arg, value in inputs.items():
        if not arg.endswith("attention_mask"):
            continue
        mask = value.astype(bool)
        for view in (mask, mask.reshape(-1, mask.shape[-1])):
            if leaf.shape[:view.ndim] == view.shape:
                return view.reshape(view.shape + (1,) * (leaf.ndim - view.ndim))
    return None


def _assert_close(got: dict, want: dict, *, where=lambda name, leaf: slice(None), atol=ATOL, what=""):
    assert got.keys() == want.keys()
    for name in want:
        sel = where(name, want[name])
        if sel is None:
            continue
        a, b = got[name], want[name]
        if isinstance(sel, np.ndarray):
            a, b = np.where(sel, a, 0), np.where(sel, b, 0)
        else:
            a, b = a[sel], b[sel]
        np.testing.assert_allclose(a, b, rtol=ATOL, atol=atol, err_msg=f"{what}: output {name}")


def _run(case: Case, inputs: dict, params=None) -> dict:
    return _leaves(_jitted(case)(_params(case) if params is None else params, inputs))


def _breaks(case: Case, law: str) -> str | None:
    return dict(case.breaks).get(law)


SEEDS = st.integers(0, 2**16)


# ------------------------------------------------------------------------------------------------------------
# Laws that share the case's one compiled apply
@pytest.mark.parametrize("case", CASES)
@settings(max_examples=examples(3))
@given(seed=SEEDS)
def test_padding_invariance(case, seed):
    rng = np.random.default_rng(seed)
    inputs = _inputs(case, rng)
    why = _breaks(case, "padding")
    if why:  # narrower law: padded ids may move real outputs of their own row (why), never another row's
        inputs = {arg: np.concatenate([np.ones_like(v[:1]), v[1:]]) if arg.endswith("attention_mask") else v
                  for arg, v in inputs.items()}
    changed = dict(inputs)
    for arg in _spec(case):
        if arg.endswith("input_ids"):
            vocab = MODEL_FAMILIES[case.family]["config"]["vocab_size"]
            noise = rng.integers(0, vocab, inputs[arg].shape).astype(np.int32)
            changed[arg] = np.where(inputs[_mask_name(arg)] == 1, inputs[arg], noise)
    want, got = _run(case, inputs), _run(case, changed)
    if why:
        assert all(np.isfinite(leaf).all() for leaf in got.values())
        _assert_close(got, want, where=_row0, what=f"padding of other rows moved an unpadded row ({why})")
        return
    _assert_close(got, want, where=lambda name, leaf: _positions(leaf, inputs), what="ids under padding moved")


def _row0(name, leaf):
    return slice(0, leaf.shape[0] // BATCH) if leaf.ndim and leaf.shape[0] % BATCH == 0 else None


@pytest.mark.parametrize("case", CASES)
@settings(max_examples=examples(3))
@given(seed=SEEDS)
def test_batch_independence(case, seed):
    rng = np.random.default_rng(seed)
    inputs, others = _inputs(case, rng), _inputs(case, rng)
    if _breaks(case, "batch"):  # narrower law: a batch of copies of one row gives that row's outputs in every row
        copies = _leaves(_jitted(case)(_params(case), {a: np.repeat(v[:1], BATCH, 0) for a, v in inputs.items()}))
        for name, leaf in copies.items():
            if leaf.ndim and leaf.shape[0] % BATCH == 0:
                rows = leaf.reshape((BATCH, -1) + leaf.shape[1:])
                np.testing.assert_allclose(rows, np.broadcast_to(rows[:1], rows.shape), rtol=ATOL, atol=ATOL,
                                           err_msg=f"{name}: copies of one row differ")
        return
    mixed = {arg: np.concatenate([inputs[arg][:1], others[arg][1:]]) for arg in inputs}
    want, got = _run(case, inputs), _run(case, mixed)
    _assert_close(got, want, where=_row0, what="other rows moved row 0")


CAUSAL = [p for p in CASES if p.values[0].causal]
# The laws that compile once more run on one head per family (its ``heavy`` head, else its masked-LM head), every
# causal head and every extra case: the heads share the encoder, and a compile per head and law would cost
# minutes of CI. The shared-compile laws above cover every head.
HEAVY = [p for p in CASES if p.values[0].causal or p.values[0].label or p.values[0].architecture
         == MODEL_FAMILIES[p.values[0].family].get("heavy", MODEL_FAMILIES[p.values[0].family].get("mlm"))]


@pytest.mark.parametrize("case", CAUSAL)
@settings(max_examples=examples(3))
@given(seed=SEEDS, t=st.integers(0, LENGTH - 2))
def test_causality(case, seed, t):
    rng = np.random.default_rng(seed)
    inputs = _inputs(case, rng, full=True)
    changed = {**inputs, "input_ids": inputs["input_ids"].copy()}
    vocab = MODEL_FAMILIES[case.family]["config"]["vocab_size"]
    changed["input_ids"][..., t + 1:] = rng.integers(0, vocab, changed["input_ids"][..., t + 1:].shape)
    want, got = _run(case, inputs), _run(case, changed)
    past = np.arange(LENGTH) <= t

    def until_t(name, leaf):
        if _positions(leaf, inputs) is None:
            return None
        return past.reshape((1, LENGTH) + (1,) * (leaf.ndim - 2))

    _assert_close(got, want, where=until_t, what=f"tokens after {t} moved outputs <= {t}")


@pytest.mark.parametrize("case", CASES)
def test_save_and_load_is_the_identity(case, tmp_path):
    module, params = _model(case)
    jaxmodels.save_pretrained(module, params, str(tmp_path))
    loaded_module, loaded = jaxmodels.from_pretrained(str(tmp_path))
    assert type(loaded_module) is type(module) and loaded_module.config == module.config
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(loaded), jax.device_get(params))
    inputs = _inputs(case, np.random.default_rng(0))
    _assert_close(_run(case, inputs, loaded), _run(case, inputs), atol=0, what="reloaded")


# ------------------------------------------------------------------------------------------------------------
# Laws that compile once more per case
@pytest.mark.parametrize("case", HEAVY)
def test_jit_equals_eager(case):
    module, params = _model(case)
    inputs = _inputs(case, np.random.default_rng(1))
    _assert_close(_leaves(_apply(module)(params, inputs)), _run(case, inputs), what="eager vs jit")


@pytest.mark.parametrize("case", HEAVY)
def test_sharded_mesh_equals_one_device(case):
    module, params = _model(case)
    inputs = _inputs(case, np.random.default_rng(2))
    mesh = partitioning.make_mesh("data=4,tensor=2")  # as the trainer builds it
    shardings = sharding.param_shardings(jaxmodels.abstract_params(module, boxed=True), mesh)
    placed = jax.device_put(params, shardings)
    batch = jax.device_put(inputs, NamedSharding(mesh, PartitionSpec("data")))
    with jax.set_mesh(mesh), nn.logical_axis_rules(sharding.mesh_rules(mesh)):
        got = _leaves(jax.jit(_apply(module))(placed, batch))
    _assert_close(got, _run(case, inputs), what="data=4 x tensor=2 mesh vs one device")


@pytest.mark.parametrize("case", HEAVY)
def test_bf16_is_close_and_finite(case):
    module, params = _model(case, "bfloat16")
    inputs = _inputs(case, np.random.default_rng(3))
    got = _leaves(_jitted(case, "bfloat16")(params, inputs))
    want = _run(case, inputs)
    for name, leaf in got.items():
        leaf = leaf.astype(np.float32)
        assert np.isfinite(leaf).all(), name
        bound = BF16_BOUND * max(1.0, float(np.abs(want[name]).max()))
        assert np.abs(leaf - want[name]).max() <= bound, (name, np.abs(leaf - want[name]).max(), bound)


@pytest.mark.parametrize("case", HEAVY)
def test_gradients_are_finite_for_padded_rows(case):
    module, params = _model(case)
    inputs = _inputs(case, np.random.default_rng(4), sparse_row=True)

    def loss(p):
        total = 0.0
        for leaf in jax.tree.leaves(_apply(module)(p, inputs)):
            if jnp.issubdtype(leaf.dtype, jnp.inexact):
                mask = _positions(leaf, inputs)
                total = total + jnp.sum(jnp.where(True if mask is None else mask, leaf, 0.0) ** 2)
        return total

    grads = jax.jit(jax.grad(loss))(params)
    bad = [jax.tree_util.keystr(p) for p, g in jax.tree_util.tree_flatten_with_path(grads)[0]
           if not np.isfinite(np.asarray(g)).all()]
    assert not bad, f"non-finite gradients with a 1-token row: {bad}"
