"""Shape and dtype contracts at the boundary of the public primitives: a caller's wrong-rank (or wrong-type)
argument fails with a ``ValueError`` naming the argument and its layout, at trace time (chex's static checks), so
under ``jit`` it never reaches XLA; and the checks add no op to the compiled program."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest

from layers import attention, dense, embeddings, norms, scale_norm

f32 = lambda *shape: jnp.zeros(shape, jnp.float32)  # noqa: E731

CASES = {  # name -> (fn, args, the argument the message must name)
    "dense-kernel-rank": (dense.dense, (f32(2, 3), f32(3)), "kernel must be [in, out]"),
    "dense-x-width": (dense.dense, (f32(2, 4), f32(3, 5)), "x must be [..., in=3]"),
    "dense-bias": (dense.dense, (f32(2, 3), f32(3, 5), f32(4)), "bias must be [out=5]"),
    "layer_norm-scale": (lambda x, s: norms.layer_norm(x, s, None, epsilon=1e-5), (f32(2, 4), f32(3)),
                         "scale must be [d=4]"),
    "rms_norm-weight": (lambda x, w: scale_norm.rms_norm(x, w, epsilon=1e-5), (f32(2, 4), f32(4, 1)),
                        "weight must be [d=4]"),
    "scale_norm-scalar": (lambda x, s: scale_norm.scale_norm(x, s, epsilon=1e-5), (f32(2, 4), f32(4)),
                          "scalar must be [1]"),
    "attention-query-rank": (lambda q, k, v: attention.dot_product_attention(q, k, v), (f32(2, 5, 8), f32(2, 5, 2, 4),
                             f32(2, 5, 2, 4)), "query must be [batch, q_length, heads, head_dim]"),
    "attention-value": (lambda q, k, v: attention.dot_product_attention(q, k, v), (f32(2, 5, 2, 4), f32(2, 5, 2, 4),
                        f32(2, 6, 2, 4)), "value must be [batch, kv_length, heads, head_dim]"),
    "attention-mask-rank": (lambda q, m: attention.dot_product_attention(q, q, q, mask=m),
                            (f32(2, 5, 2, 4), jnp.ones((2, 5), bool)), "mask must be [batch, heads, q_length"),
    "embed-table-rank": (lambda t, i: embeddings.embed_lookup(t, i), (f32(10), jnp.zeros((2, 3), jnp.int32)),
                         "table must be [num, features]"),
    "embed-ids-type": (lambda t, i: embeddings.embed_lookup(t, i), (f32(10, 4), f32(2, 3)),
                       "ids: token ids must be integers"),
}


@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize("jitted", [False, True], ids=["eager", "jit"])
def test_a_wrong_argument_fails_at_the_boundary_naming_it(name, jitted):
    fn, args, message = CASES[name]
    run = jax.jit(fn) if jitted else fn
    with pytest.raises(ValueError, match="Assertion assert_") as info:
        run(*args)
    assert message in str(info.value)


def test_checks_add_nothing_to_the_compiled_program():
    def unchecked(x, k, b):
        return jnp.matmul(x, k) + b

    args = (f32(2, 3), f32(3, 5), f32(5))
    ours = jax.make_jaxpr(dense.dense)(*args)
    assert len(ours.eqns) == len(jax.make_jaxpr(unchecked)(*args).eqns)
