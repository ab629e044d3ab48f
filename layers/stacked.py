"""The layer stack: N layers over stacked params, traced once, for every family.

This is how depth stays out of compile time: a layer is traced once and its params are stacked (and indexed
with a traced step number), instead of N separately traced layers. The logical axis names of every param get
the stack axes prepended, so sharding rules see e.g. ``("layers", "embed", "mlp")``.

    params = init_stacked(layer_module, rng, (num_layers,), (axes.LAYERS,), dummy_input)   # [L, ...] leaves
    out = scan_layers(body, params, h, key=dropout_key, residuals="dots", unroll=1, cache=cache)
    out.carry, out.outputs, out.cache      # last state, one output per layer (in layer order), stacked new cache

``scan_layers`` is the one loop over layers: ALBERT (shared layer groups through ``param_index``), MEGA and
Reformer (its per-layer-output and cached decoding paths; the training path is ``layers.reversible``, which keys
its layers with the same :func:`layer_key`) all run it. Knobs every family exposes with the same names:

- ``scan_residuals`` (``"all" | "dots" | "inputs"``, :data:`SCAN_RESIDUALS`): what the backward pass keeps of
  each layer; ``remat=True`` on a module is ``"inputs"`` (levanter's ``gradient_checkpointing``, big_vision's
  ``remat_policy``).
- ``scan_unroll``: layers per scan iteration (1 traces the layer once; ``num_layers`` unrolls fully).

Heterogeneous stacks (Reformer's alternating local / LSH layers) give tuples of ``P`` bodies and ``P`` stacked
param trees: layer ``l`` is of kind ``l % P`` and uses row ``l // P`` of that kind's params, as in
``layers.reversible``.
"""

from __future__ import annotations

import math
from typing import Any, Callable, NamedTuple, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

Array = jax.Array


def _is_box(x: Any) -> bool:
    return isinstance(x, nn.Partitioned)


def init_stacked(module: nn.Module, rng: Array, stack_shape: Sequence[int], stack_names: Sequence[str | None],
                 *init_args, **init_kwargs):
    """``module.init`` run for ``prod(stack_shape)`` independent keys, stacked to ``[*stack_shape, ...]``.

    Returns the ``params`` tree, still boxed with logical names (``stack_names`` prepended).
    """
    n = math.prod(stack_shape)
    keys = jax.random.split(rng, n)
    params = jax.vmap(lambda k: module.init(k, *init_args, **init_kwargs)["params"])(keys)

    def restack(leaf):
        if _is_box(leaf):
            value = leaf.value.reshape(tuple(stack_shape) + leaf.value.shape[1:])
            return leaf.replace(value=value, names=tuple(stack_names) + tuple(leaf.names))
        return leaf.reshape(tuple(stack_shape) + leaf.shape[1:])

    return jax.tree.map(restack, params, is_leaf=_is_box)


def index_stacked(params, index):
    """The params of one stacked copy: every leaf indexed by ``index`` (ints or traced scalars) on its leading axes."""
    return jax.tree.map(lambda p: p[index], params)


# What the backward pass keeps from each scanned layer. Under ``lax.scan`` every residual autodiff keeps is
# written into a ``[depth, ...]`` stack (a zero-filled buffer, a dynamic-update-slice per layer, a slice back in
# the backward), so each elementwise intermediate costs far more than it does unrolled: for ALBERT-base, plain
# autodiff keeps six ``[12, 8, 128, 3072]`` stacks of GELU intermediates alone. Keeping only matmul outputs
# and recomputing the cheap elementwise work (softmax, LayerNorm, activations) cuts the step's temp memory 2.1x
# and its time ~10% on CPU (benchmarks/albert_train_step.py).
SCAN_RESIDUALS = {
    "all": None,  # plain autodiff: every intermediate is kept
    "dots": jax.checkpoint_policies.dots_saveable,  # matmul outputs kept, elementwise ops recomputed
    "inputs": jax.checkpoint_policies.nothing_saveable,  # only each layer's input: the whole layer is recomputed
}


def check_scan_residuals(residuals: str, field: str = "scan_residuals") -> None:
    if residuals not in SCAN_RESIDUALS:
        raise ValueError(f"{field}={residuals!r}; expected one of {sorted(SCAN_RESIDUALS)}")


def checkpoint_layer(fn, residuals: str, field: str = "scan_residuals"):
    """``fn`` (a scan body) wrapped so that its backward keeps only the ``residuals`` of :data:`SCAN_RESIDUALS`.

    Values and gradients do not change; only what is stored versus recomputed does.
    """
    check_scan_residuals(residuals, field)
    policy = SCAN_RESIDUALS[residuals]
    if residuals == "all":
        return fn
    return jax.checkpoint(fn, prevent_cse=False, policy=policy)


def resolve_residuals(remat: bool, scan_residuals: str, field: str = "scan_residuals") -> str:
    """The residual policy a module's ``remat`` / ``scan_residuals`` fields ask for (``remat=True`` is ``"inputs"``)."""
    check_scan_residuals(scan_residuals, field)
    return "inputs" if remat else scan_residuals


def check_scan_unroll(unroll: int, field: str = "scan_unroll") -> None:
    if isinstance(unroll, bool) or not isinstance(unroll, int) or unroll < 1:
        raise ValueError(f"{field}={unroll!r}; expected a positive int (layers per scan iteration)")


def layer_key(key: Array | None, layer: int | Array) -> Array | None:
    """The PRNG key of layer ``layer`` (its global index): ``fold_in(key, layer)``, or None without a key.

    The one definition every stack uses (``scan_layers``, ``layers.reversible``), so a family's plain, reversible
    and recomputed passes draw the same dropout masks for the same layer.
    """
    return None if key is None else jax.random.fold_in(key, layer)


@jax.tree_util.register_pytree_node_class
class PerLayer(tuple):
    """A stack held as one tree per layer (:func:`split_layers`): every layer's arrays are buffers of their own.

    Given per-layer params (and caches), :func:`scan_layers` runs the layers unrolled instead of as a scan. This is
    for decoding loops: in a scan a layer reads its weights through a dynamic slice of the stacked arrays, which XLA
    materialises, so every decoding step copies every weight before reading it (BART-base decoder steps on CPU are
    ~2x slower that way: ``benchmarks/bart_generation.py``). Split the stack once, before the loop (a decoding cache
    can hold it), and each step reads the weights in place. The price: the layer is traced once per layer.
    """

    def tree_flatten(self):
        return tuple(self), None

    @classmethod
    def tree_unflatten(cls, aux, children):
        return cls(children)


def split_layers(stacked: Any) -> PerLayer:
    """``[rows, ...]`` stacked leaves -> :class:`PerLayer` of ``rows`` trees (each ``stacked[l]``)."""
    rows = {int(leaf.shape[0]) for leaf in jax.tree.leaves(stacked)}
    if len(rows) != 1:
        raise ValueError(f"split_layers: stacked leaves must share their leading (layers) size; got {sorted(rows)}")
    return PerLayer(index_stacked(stacked, l) for l in range(rows.pop()))


class StackOutput(NamedTuple):
    """What :func:`scan_layers` returns.

    ``carry``: the state after the last layer. ``outputs``: one entry per layer, in layer order (whatever the body
    returned as its per-layer output: attention weights, the hidden state to collect, ...; ``None`` entries when
    the body returned None). ``cache``: the updated per-layer cache, stacked like the one given (None if none).
    """

    carry: Any
    outputs: tuple
    cache: Any


def scan_layers(
    body: Callable | Sequence[Callable],
    params: Any,
    carry: Any,
    *,
    key: Array | None = None,
    residuals: str = "all",
    unroll: int = 1,
    cache: Any = None,
    param_index: Sequence[int] | None = None,
    num_layers: int | None = None,
    first_layer: int = 0,
) -> StackOutput:
    """Runs a stack of layers as one ``lax.scan`` whose body is traced once.

    Args:
      body: ``body(params, carry, *, key, cache, index) -> (carry, output, new_cache)`` for one layer: ``params``
        that layer's (unstacked) params, ``key`` its PRNG key (:func:`layer_key` of its global index, None without
        ``key``), ``cache`` its slice of ``cache`` (None without), ``index`` its global index (a traced int32).
        ``output`` (any pytree, or None) is collected per layer. Or a tuple of ``P`` such bodies, one per kind.
      params: the stacked params: every leaf ``[rows, ...]`` (a tuple of ``P`` trees with ``P`` bodies); or a
        :class:`PerLayer` of one tree per layer (one body; ``cache`` then a ``PerLayer`` too): the layers run
        unrolled, each reading its own buffers (decoding loops; see :class:`PerLayer`).
      carry: the initial state (any pytree: ``[batch, length, embed]``, or Reformer's two streams).
      key: dropout key of the whole stack (None: deterministic).
      residuals: what the backward keeps of each scan step (:data:`SCAN_RESIDUALS`).
      unroll: scan steps unrolled per iteration (``lax.scan``'s ``unroll``).
      cache: per-layer decoding state, every leaf stacked like ``params`` (``[rows, ...]``); None for no cache.
      param_index: layer ``l`` runs params row ``param_index[l]`` (ALBERT's shared groups); one body only. When
        every entry is the same row, the row is indexed statically, so XLA keeps it loop-invariant.
      num_layers: how many layers (default: the params' rows times ``P``, or ``len(param_index)``).
      first_layer: the global index of the first layer run (for keys and ``index``), when a stack is run in parts.

    Returns:
      :class:`StackOutput` ``(carry, outputs, cache)``.
    """
    check_scan_residuals(residuals, "residuals")
    check_scan_unroll(unroll, "unroll")
    if isinstance(params, PerLayer):
        return _run_per_layer(body, params, carry, key=key, residuals=residuals, cache=cache, first_layer=first_layer,
                              param_index=param_index)
    bodies = (body,) if callable(body) else tuple(body)
    kinds = len(bodies)
    trees = (params,) if callable(body) else tuple(params)
    caches = (cache,) if callable(body) else (tuple(cache) if cache is not None else (None,) * kinds)
    if len(trees) != kinds or len(caches) != kinds:
        raise ValueError(f"scan_layers: {kinds} bodies need {kinds} stacked param trees and caches; got "
                         f"{len(trees)} and {len(caches)}")
    if param_index is not None and kinds != 1:
        raise ValueError("scan_layers: param_index needs a single body (one kind of layer)")
    rows = {int(leaf.shape[0]) for tree in trees for leaf in jax.tree.leaves(tree)}
    if len(rows) > 1:
        raise ValueError(f"scan_layers: every stacked param leaf must have the same leading (layers) size; got "
                         f"{sorted(rows)}")
    if param_index is not None:
        param_index = [int(i) for i in param_index]
        num_layers = len(param_index) if num_layers is None else num_layers
    elif num_layers is None:
        if not rows:
            raise ValueError("scan_layers: params hold no arrays; give num_layers")
        num_layers = rows.pop() * kinds
    if num_layers % kinds:
        raise ValueError(f"scan_layers: num_layers={num_layers} is not a multiple of the {kinds} layer kinds")
    steps = num_layers // kinds

    # What the scan iterates over: the params rows (or, for shared rows, the row index), the caches, the step.
    shared_row = None
    if param_index is not None:
        if len(param_index) != num_layers:
            raise ValueError(f"scan_layers: param_index has {len(param_index)} entries for {num_layers} layers")
        if len(set(param_index)) == 1:
            shared_row = param_index[0]
            xs_params = None
        else:
            xs_params = jnp.asarray(param_index, jnp.int32)
    else:
        xs_params = trees

    def step(carry, xs):
        step_params, step_caches, index = xs
        outputs, new_caches = [], []
        for k in range(kinds):
            if shared_row is not None:
                p = index_stacked(trees[0], shared_row)
            elif param_index is not None:
                p = index_stacked(trees[0], step_params)
            else:
                p = step_params[k]
            layer = first_layer + index * kinds + k
            carry, out, new_cache = bodies[k](p, carry, key=layer_key(key, layer), cache=step_caches[k],
                                              index=layer)
            outputs.append(out)
            new_caches.append(new_cache)
        return carry, (tuple(outputs), tuple(new_caches))

    step = checkpoint_layer(step, residuals, "residuals")
    carry, (outputs, new_caches) = jax.lax.scan(
        step, carry, (xs_params, caches, jnp.arange(steps, dtype=jnp.int32)), unroll=min(unroll, max(steps, 1)))
    per_layer = tuple(index_stacked(outputs[l % kinds], l // kinds) for l in range(num_layers))
    new_cache = None
    if cache is not None:
        new_cache = new_caches[0] if callable(body) else new_caches
    return StackOutput(carry, per_layer, new_cache)


def _run_per_layer(body, params: PerLayer, carry, *, key, residuals, cache, first_layer, param_index) -> StackOutput:
    """:func:`scan_layers` over :class:`PerLayer` params: the same keys, indices, residual policy and outputs, as a
    Python loop; the new cache is a ``PerLayer`` too."""
    if not callable(body) or param_index is not None:
        raise ValueError("scan_layers: per-layer params need a single body and no param_index")
    if cache is not None and (not isinstance(cache, PerLayer) or len(cache) != len(params)):
        raise ValueError(f"scan_layers: per-layer params need a PerLayer cache of {len(params)} layers")

    def layer(p, h, layer_key_, layer_cache, index):
        return body(p, h, key=layer_key_, cache=layer_cache, index=index)

    layer = checkpoint_layer(layer, residuals, "residuals")
    outputs, caches = [], []
    for l, p in enumerate(params):
        index = first_layer + l
        carry, out, new_cache = layer(p, carry, layer_key(key, index), None if cache is None else cache[l],
                                      jnp.asarray(index, jnp.int32))
        outputs.append(out)
        caches.append(new_cache)
    return StackOutput(carry, tuple(outputs), None if cache is None else PerLayer(caches))


def scan_layers_reference(body, params, carry, *, key=None, cache=None, param_index=None):
    """Test-only twin of :func:`scan_layers`: a Python loop over layers (one body; plain autodiff)."""
    rows = jax.tree.leaves(params)[0].shape[0]
    param_index = list(range(rows)) if param_index is None else list(param_index)
    outputs, caches = [], []
    for layer, row in enumerate(param_index):
        layer_cache = None if cache is None else index_stacked(cache, layer)
        carry, out, new_cache = body(index_stacked(params, row), carry,
                                     key=None if key is None else jax.random.fold_in(key, layer),
                                     cache=layer_cache, index=jnp.int32(layer))
        outputs.append(out)
        caches.append(new_cache)
    new_cache = None if cache is None else jax.tree.map(lambda *a: jnp.stack(a), *caches)
    return StackOutput(carry, tuple(outputs), new_cache)
