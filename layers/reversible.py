"""Reversible residual stack (RevNet coupling, as in Reformer) with activation memory independent of depth.

One layer maps ``(x1, x2) -> (y1, y2)``::

    y1 = x1 + F(x2)
    y2 = x2 + G(y1)

and can be inverted exactly (up to rounding) from its outputs: ``x2 = y2 - G(y1)``, ``x1 = y1 - F(x2)``.
``reversible_stack`` runs ``depth`` such layers as a ``lax.scan`` over per-layer params stacked on a leading
``layers`` axis, wrapped in ONE ``jax.custom_vjp``: the forward pass keeps only the final ``(y1, y2)`` (plus an
optional small per-layer auxiliary output of ``F``), and the backward pass is a reverse ``lax.scan`` that
rebuilds each layer's inputs from its outputs and takes that layer's VJP. Activation memory is therefore that of
one layer, whatever the depth (a custom VJP per layer would still store every layer boundary).

Auxiliary output (``has_aux=True``): ``F`` may compute something from its input that must be identical when the
layer is recomputed, e.g. LSH bucket ids: an ``argmax`` over reconstructed inputs can flip under rounding. ``F``
is then called as ``F(params, x, key, context, aux)`` and returns ``(out, aux)``; in the forward pass ``aux`` is
``None`` and ``F`` computes it, the stack saves it per layer, and on recomputation ``F`` receives the saved value
back and must use it instead of recomputing. The aux is treated as non-differentiable.

Randomness: with a ``key``, layer ``l`` uses ``f_key = fold_in(layer_key(key, l), 0)`` and
``g_key = fold_in(layer_key(key, l), 1)`` (``layers.stacked.layer_key``, the key every stack gives layer ``l``)
both in the forward pass and on recomputation, so dropout masks match, and match a plain ``scan_layers`` pass.
Without a key, ``F`` and ``G`` receive ``None`` (deterministic).

Everything F and G are differentiated with respect to must come in through ``f_params`` / ``g_params`` (or the
streams): they may close over non-differentiated values (also under ``jit``), but differentiating a closed-over
value raises JAX's ``UnexpectedTracerError``, because the custom VJP only knows its explicit inputs.

Heterogeneous stacks (Reformer alternating local / LSH attention): ``f`` and ``g`` may be tuples of ``P``
functions with ``f_params`` / ``g_params`` tuples of ``P`` stacked trees; layer ``l`` is of kind ``l % P`` and uses
row ``l // P`` of that kind's params. The scan then runs over ``depth / P`` groups of ``P`` layers.

Sequence chunks (``chunk=C``, streams ``[batch, length, ...]`` with ``length % C == 0``): for long sequences the
memory of the backward pass is that of the whole-length temporaries of one layer, so the stack can run the
position-wise parts of a layer ``C`` positions at a time, reading and updating the four streams (``y1, y2, dy1,
dy2``) in place. ``G`` must then treat positions independently and is called per chunk as
``G(params, y[:, s:s + C], key, context, s)`` (``s`` the chunk's first position, traced int32: a dropout mask
keyed on it is the same in the forward pass and on recomputation). Each ``F`` is a :class:`SplitF`
``(pre, core, post)`` with ``F(x) = post(core(pre(x)))``: ``pre`` and ``post`` position-wise, run per chunk like
``G``, and ``core`` (attention) on the whole length of ``pre``'s output. Only ``pre``'s output, ``core``'s output
and their cotangents are whole-length then (besides the streams); no layer norm, projection, dropout or output
dense temporary of the whole sequence exists. Values are those of the unchunked stack (same ops per position;
parameter gradients are summed over chunks, so equal up to float reassociation).
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
from jax import lax

from layers.stacked import layer_key

__all__ = ["LOW_MEMORY_XLA_FLAGS", "SplitF", "reversible_stack", "reversible_stack_reference"]

Params = Any
FFn = Callable[..., Any]  # F(params, x, key, context) -> out   or   F(params, x, key, context, aux) -> (out, aux)
GFn = Callable[..., jax.Array]  # G(params, y, key, context) -> out


# XLA flag (an ``XLA_FLAGS`` entry, read when the backend starts) under which a long-sequence step built on this stack
# compiles to its memory on CPU: XLA:CPU's concurrency-optimized scheduler (on by default) starts every
# zero-initialised loop accumulator of the backward pass (the chunk loops' buffers, autodiff's cotangent accumulators
# of the attention's block loops: whole-length buffers each) at the top of a layer's backward, so that all of them are
# live at once; the memory-minimising scheduler allocates each when its loop starts (Reformer's benchmark step at 64K
# tokens: 21.6 -> 12.6 KiB of temp per token). jax 0.10's ``compile(compiler_options=...)`` accepts this option but
# does not change the schedule, hence the environment variable. No effect on other platforms.
LOW_MEMORY_XLA_FLAGS = "--xla_cpu_enable_concurrency_optimized_scheduler=false"


class SplitF(NamedTuple):
    """``F(x) = post(core(pre(x)))`` for a chunked stack (module docstring, ``chunk``):

    ``pre(params, x_chunk, key, context, start) -> a_chunk`` (pytree, leaves ``[batch, C, ...]``),
    ``core(params, a, key, context[, aux]) -> c [batch, length, ...]`` (or ``(c, aux)`` with ``has_aux``) on the
    whole-length ``a``, ``post(params, c_chunk, key, context, start) -> out_chunk`` (``x1``'s shape per chunk).
    """

    pre: Callable[..., Any]
    core: Callable[..., Any]
    post: Callable[..., Any]


def _is_fn(f) -> bool:
    return isinstance(f, SplitF) or callable(f)


def _as_kinds(f, g, f_params, g_params) -> tuple[tuple, tuple, tuple, tuple, bool]:
    """Normalises the single-kind and the P-kind calling conventions to tuples; validates before tracing."""
    single = _is_fn(f)
    if single != _is_fn(g):
        raise ValueError("f and g must both be callables, or both be tuples of callables (one per layer kind)")
    if single:
        fs, gs, fps, gps = (f,), (g,), (f_params,), (g_params,)
    else:
        fs, gs = tuple(f), tuple(g)
        if not fs or len(fs) != len(gs) or not all(map(_is_fn, fs + gs)):
            raise ValueError("f and g must be tuples of callables of the same non-zero length (one per layer kind)")
        if not isinstance(f_params, (tuple, list)) or not isinstance(g_params, (tuple, list)):
            raise ValueError("with tuples of f/g, f_params and g_params must be tuples with one stacked tree per kind")
        fps, gps = tuple(f_params), tuple(g_params)
        if len(fps) != len(fs) or len(gps) != len(gs):
            raise ValueError(
                f"f_params / g_params must have one stacked tree per layer kind ({len(fs)}); "
                f"got {len(fps)} and {len(gps)}"
            )
    return fs, gs, fps, gps, single


def _num_groups(fps: tuple, gps: tuple) -> int:
    """The common leading (layers) size of every stacked param leaf."""
    sizes = set()
    for tree in fps + gps:
        for leaf in jax.tree_util.tree_leaves(tree):
            if leaf.ndim < 1:
                raise ValueError("every f_params / g_params leaf must be stacked with a leading layers axis")
            sizes.add(int(leaf.shape[0]))
    if not sizes:
        raise ValueError("f_params and g_params hold no arrays: the depth (leading layers axis) is unknown")
    if len(sizes) != 1:
        raise ValueError(
            f"every f_params / g_params leaf must have the same leading layers size (per kind); got {sorted(sizes)}"
        )
    return sizes.pop()


def _layer_keys(key, layer):
    """``(f_key, g_key)`` of layer ``layer``: F and G fold 0 and 1 into the stack's key of that layer."""
    key = layer_key(key, layer)
    if key is None:
        return None, None
    return jax.random.fold_in(key, 0), jax.random.fold_in(key, 1)


def _validate_inputs(x1: jax.Array, x2: jax.Array) -> None:
    for name, x in (("x1", x1), ("x2", x2)):
        if not jnp.issubdtype(x.dtype, jnp.inexact):
            raise ValueError(f"{name} must be a floating array, got dtype {x.dtype}")


def _stop_gradient_inexact(tree: Any) -> Any:
    # Context is documented as non-differentiable; make that explicit rather than silently returning zeros.
    def stop(a):
        dtype = a.dtype if hasattr(a, "dtype") else jnp.result_type(a)
        return lax.stop_gradient(a) if jnp.issubdtype(dtype, jnp.inexact) else a

    return jax.tree_util.tree_map(stop, tree)


def reversible_stack(
    f: FFn | Sequence[FFn],
    g: GFn | Sequence[GFn],
    f_params: Params,
    g_params: Params,
    x1: jax.Array,
    x2: jax.Array,
    *,
    key: jax.Array | None = None,
    context: Any = None,
    has_aux: bool = False,
    chunk: int | None = None,
) -> tuple[jax.Array, jax.Array, Any]:
    """Runs a reversible residual stack with O(1)-in-depth activation memory for the backward pass.

    Args:
      f: ``F(params, x, key, context) -> out`` (or, with ``has_aux``, ``F(params, x, key, context, aux) ->
        (out, aux)``), mapping an ``x2``-shaped array to an ``x1``-shaped one; or a tuple of such, one per kind.
      g: ``G(params, y, key, context) -> out`` mapping an ``x1``-shaped array to an ``x2``-shaped one (or tuple).
      f_params: F's params, every leaf stacked ``[depth, ...]`` (or ``[depth / P, ...]`` per kind). Float only.
      g_params: G's params, same stacking.
      x1, x2: the two residual streams, e.g. ``[batch, length, embed]`` each (Reformer starts with x1 = x2).
        Outputs of F and G are cast to the stream dtype before the residual add.
      key: optional PRNG key; per-layer keys are folded in (see module docstring).
      context: optional pytree given unchanged to every F and G call (attention mask, fixed hash rotations).
        Not differentiated: gradients do not flow into it (it is wrapped in ``stop_gradient``).
      has_aux: whether F uses the aux protocol.
      chunk: run the position-wise parts of every layer ``chunk`` positions (axis 1) at a time, updating the
        streams in place (module docstring): ``g`` is then called with the chunk's start and every ``f`` is a
        :class:`SplitF`. ``None``: every layer runs on the whole length (``f`` plain callables).

    Returns:
      ``(y1, y2, aux)``: final streams with the shapes of ``x1``, ``x2``; ``aux`` is F's aux stacked per layer
      (``[depth, ...]`` leaves; a tuple per kind when f is a tuple), or ``None`` without ``has_aux``.
    """
    fs, gs, fps, gps, single = _as_kinds(f, g, f_params, g_params)
    num_groups = _num_groups(fps, gps)
    _validate_inputs(x1, x2)
    kinds = len(fs)
    context = _stop_gradient_inexact(context)
    split = [isinstance(fk, SplitF) for fk in fs]
    if chunk is None:
        if any(split):
            raise ValueError("f: a SplitF runs chunk by chunk; give the stack a chunk length (chunk=...)")
    else:
        length = x1.shape[1] if x1.ndim >= 2 else 0
        if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1 or length % chunk:
            raise ValueError(f"chunk={chunk!r}: must be a positive int dividing the length (axis 1) {length}")
        if not all(split):
            raise ValueError("f: with chunk=..., every F must be a SplitF(pre, core, post)")
        if x2.shape[1] != length:
            raise ValueError(f"x1 and x2 must have the same length (axis 1) with chunk=...; got {x1.shape}, {x2.shape}")
        return _chunked_stack(fs, gs, fps, gps, x1, x2, key, context, has_aux, chunk, num_groups, single)

    def call_f(k, p, x, f_key, ctx, aux, dtype):
        if has_aux:
            out, new_aux = fs[k](p, x, f_key, ctx, aux)
        else:
            out, new_aux = fs[k](p, x, f_key, ctx), None
        return out.astype(dtype), new_aux

    def call_g(k, p, y, g_key, ctx, dtype):
        return gs[k](p, y, g_key, ctx).astype(dtype)

    def layer_forward(k, fp, gp, y1, y2, f_key, g_key, ctx):
        f_out, aux = call_f(k, fp, y2, f_key, ctx, None, y1.dtype)
        y1 = y1 + f_out
        return y1, y2 + call_g(k, gp, y1, g_key, ctx, y2.dtype), aux

    def layer_backward(k, fp, gp, aux, y1, y2, dy1, dy2, f_key, g_key, ctx):
        g_out, g_vjp = jax.vjp(lambda p, y: call_g(k, p, y, g_key, ctx, y2.dtype), gp, y1)
        x2 = y2 - g_out
        dgp, dy1_from_g = g_vjp(dy2)
        dy1 = dy1 + dy1_from_g
        # Recompute F on the rebuilt input with the *saved* aux (never re-hash reconstructed inputs).
        f_out, f_vjp = jax.vjp(lambda p, x: call_f(k, p, x, f_key, ctx, aux, y1.dtype)[0], fp, x2)
        x1 = y1 - f_out
        dfp, dx2_from_f = f_vjp(dy1)
        return x1, x2, dy1, dy2 + dx2_from_f, dfp, dgp

    return _custom_stack(layer_forward, layer_backward, kinds, num_groups, fps, gps, x1, x2, key, context,
                         has_aux, single)


def _custom_stack(layer_forward, layer_backward, kinds, num_groups, fps, gps, x1, x2, key, ctx, has_aux, single):
    """The reversible stack's scan over layer groups and its ``custom_vjp``, given one layer's two directions:

    ``layer_forward(k, fp, gp, y1, y2, f_key, g_key, ctx) -> (y1, y2, aux)`` and ``layer_backward(k, fp, gp, aux,
    y1, y2, dy1, dy2, f_key, g_key, ctx) -> (x1, x2, dx1, dx2, dfp, dgp)`` (the layer's inputs rebuilt from its
    outputs, the cotangents of its inputs, its params' gradients). Only the final streams and the per-layer aux
    are saved for the backward pass. Returns ``reversible_stack``'s ``(y1, y2, aux)``."""

    def forward(fps, gps, x1, x2, key, ctx):
        def group(carry, xs):
            y1, y2 = carry
            group_fps, group_gps, index = xs
            auxs = []
            for k in range(kinds):
                f_key, g_key = _layer_keys(key, index * kinds + k)
                y1, y2, aux = layer_forward(k, group_fps[k], group_gps[k], y1, y2, f_key, g_key, ctx)
                auxs.append(aux)
            return (y1, y2), tuple(auxs)

        (y1, y2), auxs = lax.scan(group, (x1, x2), (fps, gps, jnp.arange(num_groups)))
        return y1, y2, auxs

    @jax.custom_vjp
    def stack(fps, gps, x1, x2, key, ctx):
        return forward(fps, gps, x1, x2, key, ctx)

    def stack_fwd(fps, gps, x1, x2, key, ctx):
        y1, y2, auxs = forward(fps, gps, x1, x2, key, ctx)
        # The whole point: only the final streams (and the small per-layer aux) are kept for the backward pass.
        return (y1, y2, auxs), (fps, gps, y1, y2, auxs, key, ctx)

    def stack_bwd(residuals, cotangents):
        fps, gps, y1, y2, auxs, key, ctx = residuals
        dy1, dy2, _ = cotangents  # the aux is non-differentiable

        def group(carry, xs):
            y1, y2, dy1, dy2 = carry
            group_fps, group_gps, group_auxs, index = xs
            dfps, dgps = [None] * kinds, [None] * kinds
            for k in reversed(range(kinds)):
                f_key, g_key = _layer_keys(key, index * kinds + k)
                y1, y2, dy1, dy2, dfps[k], dgps[k] = layer_backward(
                    k, group_fps[k], group_gps[k], group_auxs[k], y1, y2, dy1, dy2, f_key, g_key, ctx)
            return (y1, y2, dy1, dy2), (tuple(dfps), tuple(dgps))

        (_, _, dx1, dx2), (dfps, dgps) = lax.scan(
            group, (y1, y2, dy1, dy2), (fps, gps, auxs, jnp.arange(num_groups)), reverse=True
        )
        return dfps, dgps, dx1, dx2, None, None

    stack.defvjp(stack_fwd, stack_bwd)
    y1, y2, auxs = stack(fps, gps, x1, x2, key, ctx)
    if not has_aux:
        return y1, y2, None
    return y1, y2, (auxs[0] if single else auxs)


def _slice(tree, start, size):
    return jax.tree_util.tree_map(lambda a: lax.dynamic_slice_in_dim(a, start, size, axis=1), tree)


def _update(tree, part, start):
    return jax.tree_util.tree_map(lambda a, b: lax.dynamic_update_slice_in_dim(a, b.astype(a.dtype), start, axis=1),
                                  tree, part)


def _tree_add(a, b):
    return jax.tree_util.tree_map(jnp.add, a, b)


def _zeros_like(tree):
    return jax.tree_util.tree_map(jnp.zeros_like, tree)


def _chunked_stack(fs, gs, fps, gps, x1, x2, key, context, has_aux, chunk, num_groups, single):
    """``reversible_stack`` with ``chunk``: the same layers, their position-wise parts run as loops over chunks that
    read and update the whole-length streams in place (``lax.fori_loop`` carries, ``dynamic_update_slice``)."""
    kinds = len(fs)
    num_chunks = x1.shape[1] // chunk

    def loop(body, init):
        return lax.fori_loop(0, num_chunks, lambda i, carry: body(i * chunk, carry), init)

    def pre_all(k, p, x, f_key, ctx):
        """``pre`` over every chunk of ``x``, written into whole-length buffers."""
        shapes = jax.eval_shape(lambda p, xc: fs[k].pre(p, xc, f_key, ctx, jnp.int32(0)), p, _slice(x, 0, chunk))
        init = jax.tree_util.tree_map(
            lambda t: jnp.zeros(t.shape[:1] + (x.shape[1],) + t.shape[2:], t.dtype), shapes)
        return loop(lambda s, a: _update(a, fs[k].pre(p, _slice(x, s, chunk), f_key, ctx, s), s), init)

    def core(k, p, a, f_key, ctx, aux):
        if has_aux:
            return fs[k].core(p, a, f_key, ctx, aux)
        return fs[k].core(p, a, f_key, ctx), None

    def layer_forward(k, fp, gp, y1, y2, f_key, g_key, ctx):
        c, aux = core(k, fp, pre_all(k, fp, y2, f_key, ctx), f_key, ctx, None)

        def add_f(s, y1):
            out = fs[k].post(fp, _slice(c, s, chunk), f_key, ctx, s)
            return _update(y1, _slice(y1, s, chunk) + out.astype(y1.dtype), s)

        y1 = loop(add_f, y1)

        def add_g(s, y2):
            out = gs[k](gp, _slice(y1, s, chunk), g_key, ctx, s)
            return _update(y2, _slice(y2, s, chunk) + out.astype(y2.dtype), s)

        return y1, loop(add_g, y2), aux

    def layer_backward(k, fp, gp, aux, y1, y2, dy1, dy2, f_key, g_key, ctx):
        # G, chunk by chunk: x2 = y2 - G(y1) in place of y2, dy1 += dG^T dy2 in place.
        def undo_g(s, carry):
            y2, dy1, dgp = carry
            out, vjp = jax.vjp(lambda p, y: gs[k](p, y, g_key, ctx, s).astype(y2.dtype), gp, _slice(y1, s, chunk))
            dgp_s, dy1_s = vjp(_slice(dy2, s, chunk))
            return (_update(y2, _slice(y2, s, chunk) - out, s), _update(dy1, _slice(dy1, s, chunk) + dy1_s, s),
                    _tree_add(dgp, dgp_s))

        x2, dy1, dgp = loop(undo_g, (y2, dy1, _zeros_like(gp)))

        # F = post(core(pre(x2))): recompute pre and core (with the saved aux), then post chunk by chunk:
        # x1 = y1 - post(c) in place of y1, and post's cotangent dc; core's VJP; pre's VJP into dy2.
        a = pre_all(k, fp, x2, f_key, ctx)
        c, core_vjp = jax.vjp(lambda p, a: core(k, p, a, f_key, ctx, aux)[0], fp, a)

        def undo_post(s, carry):
            y1, dc, dfp = carry
            out, vjp = jax.vjp(lambda p, cs: fs[k].post(p, cs, f_key, ctx, s).astype(y1.dtype), fp,
                               _slice(c, s, chunk))
            dfp_s, dc_s = vjp(_slice(dy1, s, chunk))
            return _update(y1, _slice(y1, s, chunk) - out, s), _update(dc, dc_s, s), _tree_add(dfp, dfp_s)

        x1, dc, dfp_post = loop(undo_post, (y1, _zeros_like(c), _zeros_like(fp)))
        del c
        dfp_core, da = core_vjp(dc)
        del dc

        def back_pre(s, carry):
            dy2, dfp = carry
            _, vjp = jax.vjp(lambda p, x: fs[k].pre(p, x, f_key, ctx, s), fp, _slice(x2, s, chunk))
            dfp_s, dx_s = vjp(_slice(da, s, chunk))
            return _update(dy2, _slice(dy2, s, chunk) + dx_s, s), _tree_add(dfp, dfp_s)

        dy2, dfp_pre = loop(back_pre, (dy2, _zeros_like(fp)))
        return x1, x2, dy1, dy2, _tree_add(_tree_add(dfp_post, dfp_core), dfp_pre), dgp

    return _custom_stack(layer_forward, layer_backward, kinds, num_groups, fps, gps, x1, x2, key, context,
                         has_aux, single)


def reversible_stack_reference(
    f: FFn | Sequence[FFn],
    g: GFn | Sequence[GFn],
    f_params: Params,
    g_params: Params,
    x1: jax.Array,
    x2: jax.Array,
    *,
    key: jax.Array | None = None,
    context: Any = None,
    has_aux: bool = False,
) -> tuple[jax.Array, jax.Array, Any]:
    """Test-only twin: the same stack as a python loop, differentiated by plain autodiff (O(depth) memory)."""
    fs = (f,) if callable(f) else tuple(f)
    gs = (g,) if callable(g) else tuple(g)
    fps = (f_params,) if callable(f) else tuple(f_params)
    gps = (g_params,) if callable(g) else tuple(g_params)
    kinds = len(fs)
    depth = kinds * jax.tree_util.tree_leaves((fps, gps))[0].shape[0]
    context = _stop_gradient_inexact(context)
    auxs = [[] for _ in range(kinds)]
    for layer in range(depth):
        k, row = layer % kinds, layer // kinds
        fp = jax.tree_util.tree_map(lambda p: p[row], fps[k])
        gp = jax.tree_util.tree_map(lambda p: p[row], gps[k])
        if key is None:
            f_key = g_key = None
        else:
            f_key = jax.random.fold_in(jax.random.fold_in(key, layer), 0)
            g_key = jax.random.fold_in(jax.random.fold_in(key, layer), 1)
        if has_aux:
            f_out, aux = fs[k](fp, x2, f_key, context, None)
            auxs[k].append(lax.stop_gradient(aux))
        else:
            f_out = fs[k](fp, x2, f_key, context)
        x1 = x1 + f_out.astype(x1.dtype)
        x2 = x2 + gs[k](gp, x1, g_key, context).astype(x2.dtype)
    if not has_aux:
        return x1, x2, None
    stacked = tuple(jax.tree_util.tree_map(lambda *a: jnp.stack(a), *per_kind) for per_kind in auxs)
    return x1, x2, (stacked[0] if callable(f) else stacked)
