"""Multi-dimensional damped EMA of MEGA (Ma et al., 2022), runnable four interchangeable ways.

Layout is batch-major: activations are ``[batch, length, embed]`` (HF's module works in ``[length, batch, embed]``)
and the decoding state is ``[batch, embed, ndim]`` (HF's layout). D is ``embed``, N is ``ndim``, and the kernel has
``D' = D`` channels when causal and ``D' = 2D`` when bidirectional (first D: forward direction, last D: backward).

Params (fp32, HF names). The functions take ``[D', N]``; the module stores HF's own layout (its first three carry
a trailing singleton axis), so a checkpoint converts by name alone::

    name                      functions module/HF  role
    damping_factor            [D', N]   [D', N, 1]   delta: p = sigmoid(delta)
    decay_factor              [D', N]   [D', N, 1]   alpha: q = 1 - p * sigmoid(alpha)
    ema_expansion_matrix      [D', N]   [D', N, 1]   beta:  x_t enters the state with gain p * beta
    kernel_projection_matrix  [D', N]   [D', N]      gamma: the state is read out with gamma * sqrt(1/N)
    residual_weight           [D]       [D]          omega

Computation, per channel d (``x`` already multiplied by the padding mask)::

    h_t = q * h_{t-1} + p * beta * x_t         (h: [N] per channel; h_{-1} = 0 or a carried state)
    y_t = sum_n gamma * sqrt(1/N) * h_t        = sum_{j<k} K[j] x_{t-j}
    K[j] = sum_n p * beta * gamma * sqrt(1/N) * q^j      (computed as exp(j * log q))
    out = silu(y + x_unmasked * omega)         (the residual uses the input *before* masking, as HF)

``k = min(truncation, L)`` (``L`` when ``truncation`` is None). Bidirectional adds the same filter run by the second
half of the params over the reversed sequence; both halves include ``x_t``. The EMA runs in fp32 whatever the dtype
of ``x``; only the final output is cast.

Algorithms (B batch, L length, C chunk size; costs are for the filter, the readout/residual is O(BLD)):

- ``fft``: kernel ``[D', k]`` then one causal (plus, bidirectional, one anti-causal: the conjugate spectrum)
  convolution by rfft of length 2L. Time O(BDL log L + D'NL); memory O(BDL) plus the ``[D', N, L]`` powers of q
  (XLA fuses them into the kernel reduction). The training path. Carried/returned state costs two more
  ``[D, N, L]`` contractions.
- ``scan``: ``lax.scan`` over time on the state ``[B, D', N]``. Time O(BLD'N) in L sequential steps; forward
  memory O(BD'N), but reverse-mode AD stores the state of every step, O(BLD'N). Long-sequence / inference
  fallback and the shape of the decoding step.
- ``chunked``: chunks of C; inside a chunk a dense causal ``[C, C]`` Toeplitz matmul per channel (MXU-friendly);
  across chunks a carried state ``[B, D', N]`` decayed by q^C and read into each in-chunk position t by q^(t+1).
  Time O(BLD'C + BLD'N) with only L/C sequential steps; memory O(BLD' + D'C^2 + BLD'N/C). Needs L % C == 0.
- ``damped_ema_step``: one decoding position, O(BDN) time and memory; causal and untruncated only.

Truncation is exact in every algorithm. ``fft`` truncates the kernel; ``scan`` and ``chunked`` use that the
truncated filter is the full filter minus the full filter of ``x`` delayed by k with gain ``p*beta*q^k``, fed as a
second input stream into the same state, so their state stays the (small) truncated state and nothing large
cancels (the price: a second input stream, about twice the in-chunk work). A carried or returned state cannot
represent a truncated window, so ``truncation`` together with ``state``/``return_state`` raises ``ValueError``
(``damped_ema_step`` has no truncation; the module refuses ``use_cache`` with ``truncation``). HF's cached path
silently ignores truncation instead, so it disagrees with its own full pass.

Numerics: q = 1 - p*alpha is clamped at 6e-8 (HF returns NaN once p*alpha rounds to 1 in fp32). Powers of q are
exp(j * log1p(-p*alpha)), accurate for q close to 1; ``scan`` multiplies by the rounded q every step, so with
q ~ 1 - 1e-5 over L = 2048 it drifts to ~1e-5 relative, against ~3e-7 for ``fft`` and ~3e-6 for ``chunked``.

Decoding: ``chunked`` prefill needs length % chunk_size == 0; left-pad with padding_mask 0 from a zero state (zero
inputs keep a zero state at zero; right padding would not, the state decays through padded steps), or prefill
with ``fft``/``scan``, which take any length.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from layers import axes

Array = jax.Array

ALGORITHMS = ("fft", "scan", "chunked")
PARAM_NAMES = (
    "damping_factor",
    "decay_factor",
    "ema_expansion_matrix",
    "kernel_projection_matrix",
    "residual_weight",
)

# Largest fp32 below 1. Once both raw values pass ~17, p * alpha rounds to exactly 1, log(q) = -inf and q^0 would
# become exp(0 * -inf) = NaN (HF does produce NaN there); clamping keeps q >= 6e-8, which changes nothing visible.
_MAX_FORGET = 1.0 - 2.0**-24


class EmaCoefficients(NamedTuple):
    """Per-channel recurrence coefficients, all ``[D', N]`` fp32."""

    q: Array  # state decay, in (0, 1)
    log_q: Array  # log(q) from log1p, accurate when q is close to 1
    gain: Array  # p * beta: weight of x_t entering the state
    readout: Array  # gamma * sqrt(1/N)


def ema_coefficients(params: Mapping[str, Array]) -> EmaCoefficients:
    """Coefficients of the recurrence from the raw params (shapes in the module docstring)."""
    f32 = jnp.float32
    p = jax.nn.sigmoid(params["damping_factor"].astype(f32))
    alpha = jax.nn.sigmoid(params["decay_factor"].astype(f32))
    forget = jnp.minimum(p * alpha, _MAX_FORGET)
    ndim = params["kernel_projection_matrix"].shape[-1]
    return EmaCoefficients(
        q=1.0 - forget,
        log_q=jnp.log1p(-forget),
        gain=p * params["ema_expansion_matrix"].astype(f32),
        readout=params["kernel_projection_matrix"].astype(f32) * math.sqrt(1.0 / ndim),
    )


def _powers(log_q: Array, exponents: Array) -> Array:
    """``q ** exponents`` as ``[D', N, len(exponents)]``; exp(l * log q) does not drift as repeated products do."""
    return jnp.exp(log_q[..., None] * exponents.astype(jnp.float32))


def _stream_kernel(weight: Array, coeffs: EmaCoefficients, length: int, precision) -> Array:
    """``K[d, j] = sum_n weight * readout * q^j`` for ``j < length``: ``[D', length]``."""
    return jnp.einsum(
        "dn,dnl->dl",
        weight * coeffs.readout,
        _powers(coeffs.log_q, jnp.arange(length)),
        precision=precision,
    )


def ema_kernel(params: Mapping[str, Array], length: int, *, precision=lax.Precision.HIGHEST) -> Array:
    """The EMA convolution kernel ``K [D', length]`` in fp32 (HF ``_compute_efficient_ema_kernel``)."""
    if not isinstance(length, int) or length <= 0:
        raise ValueError(f"length must be a positive int, got {length!r}")
    coeffs = ema_coefficients(params)
    return _stream_kernel(coeffs.gain, coeffs, length, precision)


# ----------------------------------------------------------------------------------------------------------------
# Validation (pure Python on static shapes, so it fails before anything is traced).


def _check_params(params: Mapping[str, Array], bidirectional: bool) -> tuple[int, int]:
    missing = [name for name in PARAM_NAMES if name not in params]
    if missing:
        raise ValueError(f"params is missing {missing}; expected keys {list(PARAM_NAMES)}")
    if params["residual_weight"].ndim != 1:
        raise ValueError(f"params['residual_weight'] must be [embed], got shape {params['residual_weight'].shape}")
    embed = params["residual_weight"].shape[0]
    channels = 2 * embed if bidirectional else embed
    gamma_shape = tuple(params["kernel_projection_matrix"].shape)
    if len(gamma_shape) != 2 or gamma_shape[0] != channels:
        raise ValueError(
            f"params['kernel_projection_matrix'] must be [{'2*embed' if bidirectional else 'embed'}={channels}, ndim]"
            f" for bidirectional={bidirectional}, got shape {gamma_shape}"
        )
    for name in PARAM_NAMES[:3]:
        if tuple(params[name].shape) != gamma_shape:
            raise ValueError(f"params['{name}'] must have shape {gamma_shape} (= kernel_projection_matrix), got "
                             f"{tuple(params[name].shape)}; HF's trailing singleton axis must be dropped")
    return embed, gamma_shape[1]


def _check_truncation(truncation) -> None:
    if truncation is not None and (not isinstance(truncation, (int, np.integer)) or isinstance(truncation, bool)
                                   or truncation <= 0):
        raise ValueError(f"truncation must be None or a positive int, got {truncation!r}")


def _check_algorithm(algorithm, chunk_size) -> None:
    if algorithm not in ALGORITHMS:
        raise ValueError(f"algorithm must be one of {ALGORITHMS}, got {algorithm!r}")
    if not isinstance(chunk_size, (int, np.integer)) or isinstance(chunk_size, bool) or chunk_size <= 0:
        raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")


def _check_call(params, x, padding_mask, *, bidirectional, truncation, algorithm, chunk_size, state,
                return_state) -> tuple[int, int]:
    _check_truncation(truncation)
    _check_algorithm(algorithm, chunk_size)
    embed, ndim = _check_params(params, bidirectional)
    if x.ndim != 3 or x.shape[-1] != embed:
        raise ValueError(f"x must be [batch, length, embed={embed}], got shape {tuple(x.shape)}")
    batch, length, _ = x.shape
    if length == 0:
        raise ValueError("x must have length >= 1")
    if padding_mask is not None and tuple(padding_mask.shape) != (batch, length):
        raise ValueError(f"padding_mask must be [batch, length]={(batch, length)}, got {tuple(padding_mask.shape)}")
    if algorithm == "chunked" and length % chunk_size:
        raise ValueError(
            f"algorithm='chunked' needs length to be a multiple of chunk_size, got length={length}, "
            f"chunk_size={chunk_size}; pad the input or pick a divisor"
        )
    if bidirectional and (state is not None or return_state):
        raise ValueError("bidirectional=True has no incremental state: state/return_state need bidirectional=False")
    if truncation is not None and (state is not None or return_state):
        raise ValueError(
            "truncation must be None when a state is carried or returned: the [batch, embed, ndim] state cannot "
            "represent a truncated window"
        )
    if state is not None and tuple(state.shape) != (batch, embed, ndim):
        raise ValueError(f"state must be [batch, embed, ndim]={(batch, embed, ndim)}, got {tuple(state.shape)}")
    return embed, ndim


# ----------------------------------------------------------------------------------------------------------------
# Causal filters. Each takes x as [B, L, D'] fp32 with coefficients for those D' channels.


def _delayed(x: Array, delay: int) -> Array:
    """``x[:, t - delay]`` with zeros before the start: ``[B, L, D']``."""
    return jnp.pad(x, ((0, 0), (delay, 0), (0, 0)))[:, : x.shape[1]]


def _input_streams(x: Array, coeffs: EmaCoefficients, truncation: int | None) -> list[tuple[Array, Array]]:
    """(input ``[B, L, D']``, gain ``[D', N]``) pairs whose states sum to the (truncated) EMA state."""
    streams = [(x, coeffs.gain)]
    length = x.shape[1]
    if truncation is not None and truncation < length:
        # Removes each input once it is `truncation` steps old: its contribution is then gain * q^k * x_{t-k}.
        streams.append((_delayed(x, truncation), -coeffs.gain * jnp.exp(truncation * coeffs.log_q)))
    return streams


def _scan_filter(streams, coeffs: EmaCoefficients, state: Array | None) -> tuple[Array, Array]:
    x0 = streams[0][0]
    batch, _, channels = x0.shape
    h0 = jnp.zeros((batch, channels, coeffs.q.shape[-1]), jnp.float32) if state is None else state
    gains = tuple(g for _, g in streams)

    def step(h, inputs_t):
        h = coeffs.q * h + sum(g * u[..., None] for g, u in zip(gains, inputs_t))
        return h, jnp.sum(h * coeffs.readout, axis=-1)

    h, ys = lax.scan(step, h0, tuple(jnp.swapaxes(u, 0, 1) for u, _ in streams))
    return jnp.swapaxes(ys, 0, 1), h


def _chunked_filter(streams, coeffs: EmaCoefficients, state: Array | None, chunk: int,
                    precision) -> tuple[Array, Array]:
    x0 = streams[0][0]
    batch, length, channels = x0.shape
    n_chunks = length // chunk
    pos = jnp.arange(chunk)
    lag = pos[:, None] - pos[None, :]  # [C(t), C(s)]
    into_state = _powers(coeffs.log_q, chunk - 1 - pos)  # q^(C-1-s): [D', N, C]
    y = jnp.zeros((batch, n_chunks, chunk, channels), jnp.float32)
    chunk_states = jnp.zeros((batch, n_chunks, channels, coeffs.q.shape[-1]), jnp.float32)
    for u, gain in streams:
        kernel = _stream_kernel(gain, coeffs, chunk, precision)  # [D', C]
        toeplitz = jnp.where(lag >= 0, kernel[:, jnp.maximum(lag, 0)], 0.0)  # [D', C, C]
        u = u.reshape(batch, n_chunks, chunk, channels)
        y = y + jnp.einsum("dts,bcsd->bctd", toeplitz, u, precision=precision)
        chunk_states = chunk_states + jnp.einsum(
            "bcsd,dns->bcdn", u, gain[..., None] * into_state, precision=precision
        )

    decay_chunk = jnp.exp(chunk * coeffs.log_q)
    h0 = jnp.zeros((batch, channels, coeffs.q.shape[-1]), jnp.float32) if state is None else state

    def carry(h, s_c):
        return decay_chunk * h + s_c, h  # emits the state entering each chunk

    h_last, h_in = lax.scan(carry, h0, jnp.swapaxes(chunk_states, 0, 1))
    out_of_state = coeffs.readout[..., None] * _powers(coeffs.log_q, pos + 1)  # q^(t+1): [D', N, C]
    y = y + jnp.einsum("cbdn,dnt->bctd", h_in, out_of_state, precision=precision)
    return y.reshape(batch, length, channels), h_last


def _fft_filter(x: Array, coeffs: EmaCoefficients, *, bidirectional: bool, kernel_len: int, state: Array | None,
                return_state: bool, precision) -> tuple[Array, Array | None]:
    batch, length, embed = x.shape
    n = 2 * length  # >= L + k - 1: the circular convolution never wraps
    kernel = _stream_kernel(coeffs.gain, coeffs, kernel_len, precision)
    spectrum = jnp.fft.rfft(kernel, n=n, axis=-1)  # [D', n/2+1]
    if bidirectional:
        # sum_j K2[j] x[t+j] is a correlation, i.e. the conjugate spectrum; zero padding to 2L keeps it linear.
        spectrum = spectrum[:embed] + jnp.conj(spectrum[embed:])
    y = jnp.fft.irfft(jnp.fft.rfft(x, n=n, axis=1) * spectrum.T, n=n, axis=1)[:, :length]

    new_state = None
    if state is not None:
        out_of_state = coeffs.readout[..., None] * _powers(coeffs.log_q, jnp.arange(1, length + 1))
        y = y + jnp.einsum("bdn,dnl->bld", state, out_of_state, precision=precision)
    if return_state:
        into_state = coeffs.gain[..., None] * _powers(coeffs.log_q, jnp.arange(length - 1, -1, -1))
        new_state = jnp.einsum("bld,dnl->bdn", x, into_state, precision=precision)
        if state is not None:
            new_state = new_state + jnp.exp(length * coeffs.log_q) * state
    return y, new_state


# ----------------------------------------------------------------------------------------------------------------
# Public functions.


def damped_ema_filter(
    params: Mapping[str, Array],
    x: Array,
    *,
    bidirectional: bool = False,
    truncation: int | None = None,
    algorithm: str = "fft",
    chunk_size: int = 64,
    state: Array | None = None,
    return_state: bool = False,
    precision=lax.Precision.HIGHEST,
) -> tuple[Array, Array | None]:
    """The linear EMA filter alone (no mask, residual or activation).

    Args:
      params: the five params (module docstring); only the first four are read.
      x: ``[batch, length, embed]``, already masked; any float dtype, computed in fp32.
      state: optional carried state ``[batch, embed, ndim]`` (causal, untruncated only).
      return_state: also return the state after the last position.
    Returns:
      ``(y [batch, length, embed] fp32, new_state [batch, embed, ndim] fp32 or None)``.
    """
    embed, _ = _check_call(params, x, None, bidirectional=bidirectional, truncation=truncation, algorithm=algorithm,
                           chunk_size=chunk_size, state=state, return_state=return_state)
    x = x.astype(jnp.float32)
    state = None if state is None else state.astype(jnp.float32)
    coeffs = ema_coefficients(params)
    length = x.shape[1]
    if algorithm == "fft":
        kernel_len = length if truncation is None else min(truncation, length)
        return _fft_filter(x, coeffs, bidirectional=bidirectional, kernel_len=kernel_len, state=state,
                           return_state=return_state, precision=precision)

    # Both directions run as one causal pass over D' = 2D channels: [x, reversed x].
    x_all = jnp.concatenate([x, jnp.flip(x, axis=1)], axis=-1) if bidirectional else x
    streams = _input_streams(x_all, coeffs, truncation)
    if algorithm == "scan":
        y, h = _scan_filter(streams, coeffs, state)
    else:
        y, h = _chunked_filter(streams, coeffs, state, chunk_size, precision)
    if bidirectional:
        y = y[..., :embed] + jnp.flip(y[..., embed:], axis=1)
    return y, (h if return_state else None)


def ema_input(x: Array, padding_mask: Array | None) -> tuple[Array, Array]:
    """``(x, x * mask)`` in fp32: the residual reads the unmasked input, the EMA the masked one (as HF).
    ``x [..., embed]`` with ``padding_mask`` of ``x``'s shape without ``embed`` (or None)."""
    x32 = x.astype(jnp.float32)
    return x32, (x32 if padding_mask is None else x32 * padding_mask.astype(jnp.float32)[..., None])


def ema_output(y: Array, x32: Array, params: Mapping[str, Array], dtype) -> Array:
    """The sub-layer's output ``silu(EMA + x * omega)`` from the filter output ``y`` and the fp32 input."""
    return jax.nn.silu(y + x32 * params["residual_weight"].astype(jnp.float32)).astype(dtype)


def damped_ema(
    params: Mapping[str, Array],
    x: Array,
    padding_mask: Array | None = None,
    *,
    bidirectional: bool = False,
    truncation: int | None = None,
    algorithm: str = "fft",
    chunk_size: int = 64,
    state: Array | None = None,
    return_state: bool = False,
    dtype: Any = None,
    precision=lax.Precision.HIGHEST,
) -> tuple[Array, Array | None]:
    """MEGA's EMA sub-layer: ``silu(EMA(x * mask) + x * omega)``.

    Args:
      params: ``damping_factor``, ``decay_factor``, ``ema_expansion_matrix``, ``kernel_projection_matrix``
        ``[D', ndim]`` and ``residual_weight [embed]`` (D' = 2*embed when bidirectional).
      x: ``[batch, length, embed]``.
      padding_mask: ``[batch, length]``, 1/True for real tokens; padded inputs do not enter the EMA (the residual
        still sees them, as in HF).
      algorithm: ``"fft"``, ``"scan"`` or ``"chunked"`` (length a multiple of ``chunk_size``); equal results.
      state / return_state: carried EMA state ``[batch, embed, ndim]`` in / out (causal, untruncated).
      dtype: output dtype (default ``x.dtype``); the EMA, residual and activation run in fp32.
    Returns:
      ``(out [batch, length, embed], new_state [batch, embed, ndim] fp32 or None)``.
    """
    _check_call(params, x, padding_mask, bidirectional=bidirectional, truncation=truncation, algorithm=algorithm,
                chunk_size=chunk_size, state=state, return_state=return_state)
    x32, masked = ema_input(x, padding_mask)
    y, new_state = damped_ema_filter(params, masked, bidirectional=bidirectional, truncation=truncation,
                                     algorithm=algorithm, chunk_size=chunk_size, state=state,
                                     return_state=return_state, precision=precision)
    return ema_output(y, x32, params, x.dtype if dtype is None else dtype), new_state


def damped_ema_step(
    params: Mapping[str, Array],
    x_t: Array,
    state: Array | None = None,
    padding_mask: Array | None = None,
    *,
    dtype: Any = None,
) -> tuple[Array, Array]:
    """One decoding position of the causal, untruncated EMA sub-layer.

    Args:
      params: causal params (``kernel_projection_matrix [embed, ndim]``).
      x_t: ``[batch, embed]``.
      state: ``[batch, embed, ndim]`` from the previous position (None: zeros, i.e. the first position).
      padding_mask: ``[batch]``, 0 for a padded position (the state then only decays).
    Returns:
      ``(out_t [batch, embed], new_state [batch, embed, ndim] fp32)``, equal to position t of
      ``damped_ema(..., return_state=True)``.
    """
    embed = params["residual_weight"].shape[-1]
    if params["kernel_projection_matrix"].shape[0] != embed:
        raise ValueError(
            "damped_ema_step needs causal params (kernel_projection_matrix [embed, ndim]); got "
            f"{tuple(params['kernel_projection_matrix'].shape)} for embed={embed}: a bidirectional EMA has no "
            "incremental state"
        )
    embed, ndim = _check_params(params, bidirectional=False)
    if x_t.ndim != 2 or x_t.shape[-1] != embed:
        raise ValueError(f"x_t must be [batch, embed={embed}], got shape {tuple(x_t.shape)}")
    batch = x_t.shape[0]
    if state is not None and tuple(state.shape) != (batch, embed, ndim):
        raise ValueError(f"state must be [batch, embed, ndim]={(batch, embed, ndim)}, got {tuple(state.shape)}")
    if padding_mask is not None and tuple(padding_mask.shape) != (batch,):
        raise ValueError(f"padding_mask must be [batch]={(batch,)}, got {tuple(padding_mask.shape)}")
    coeffs = ema_coefficients(params)
    x32, masked = ema_input(x_t, padding_mask)
    new_state = coeffs.gain * masked[..., None]
    if state is not None:
        new_state = new_state + coeffs.q * state.astype(jnp.float32)
    y = jnp.sum(new_state * coeffs.readout, axis=-1)
    return ema_output(y, x32, params, x_t.dtype if dtype is None else dtype), new_state


def damped_ema_reference(params, x, padding_mask=None, *, bidirectional=False, truncation=None):
    """Slow twin in float64 numpy (tests only): the recurrence restarted for every output over its window.

    ``x [batch, length, embed]``, params as ``damped_ema``; returns ``out [batch, length, embed]`` float64.
    """
    f64 = lambda a: np.asarray(a, np.float64)  # noqa: E731
    p = 1.0 / (1.0 + np.exp(-f64(params["damping_factor"])))
    alpha = 1.0 / (1.0 + np.exp(-f64(params["decay_factor"])))
    q = 1.0 - p * alpha
    gain = p * f64(params["ema_expansion_matrix"])
    readout = f64(params["kernel_projection_matrix"]) * math.sqrt(1.0 / q.shape[-1])
    x = f64(x)
    batch, length, embed = x.shape
    masked = x if padding_mask is None else x * f64(padding_mask)[..., None]
    window = length if truncation is None else min(truncation, length)

    def causal(inputs, half):
        qh, gh, rh = q[half], gain[half], readout[half]
        y = np.zeros_like(inputs)
        for t in range(length):
            h = np.zeros((batch, embed, q.shape[-1]))
            for s in range(max(0, t - window + 1), t + 1):
                h = qh * h + gh * inputs[:, s, :, None]
            y[:, t] = (h * rh).sum(-1)
        return y

    y = causal(masked, slice(0, embed))
    if bidirectional:
        y = y + causal(masked[:, ::-1], slice(embed, 2 * embed))[:, ::-1]
    z = y + x * f64(params["residual_weight"])
    return z / (1.0 + np.exp(-z))


# ----------------------------------------------------------------------------------------------------------------
# Linen module.


def _beta_init(std: float):
    """HF init for beta ``[D', N, 1]``: N(0, std) plus +1, -1, +1, ... along N (said to be more stable than all +1)."""

    def init(key, shape, dtype=jnp.float32):
        signs = jnp.where(jnp.arange(shape[1]) % 2 == 0, 1.0, -1.0)[:, None]
        return (std * jax.random.normal(key, shape, jnp.float32) + signs).astype(dtype)

    return init


class MultiDimensionDampedEma(nn.Module):
    """MEGA's EMA sub-layer (HF ``MegaMultiDimensionDampedEma``) owning its five params, in HF's layout.

    Input ``[batch, length, embed]`` (batch-major; HF is length-major). Params ``[D', N, 1]`` (delta, alpha, beta),
    ``[D', N]`` (gamma), ``[D]`` (omega), ``D' = 2 * embed_dim`` when ``bidirectional``; initialised like HF's
    ``_init_weights`` with the ``ema_*_range`` stds of ``MegaConfig``.

    ``algorithm`` is that of full passes; ``"chunked"`` needs whole chunks, so a length (per shard) that
    ``chunk_size`` does not divide (an init's dummy input, a sequence shorter than a chunk) runs ``"fft"``, which
    computes the same values. ``sequence_sharding`` (``layers.sequence_parallel.SequenceSharding``, None:
    unsharded): full passes split the length over its mesh axis (``sharded_damped_ema``); cached calls never do.
    """

    embed_dim: int
    ndim: int = 16
    bidirectional: bool = False
    truncation: int | None = None
    algorithm: str = "fft"
    chunk_size: int = 64
    dtype: Any = None  # output dtype; None keeps the input's
    param_dtype: Any = jnp.float32
    precision: Any = lax.Precision.HIGHEST
    delta_alpha_range: float = 0.2
    beta_range: float = 0.02
    gamma_omega_range: float = 1.0
    sequence_sharding: Any = None

    def __post_init__(self):
        for name in ("embed_dim", "ndim"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        _check_truncation(self.truncation)
        _check_algorithm(self.algorithm, self.chunk_size)
        super().__post_init__()

    @nn.compact
    def __call__(
        self,
        inputs: Array,
        padding_mask: Array | None = None,
        state: Array | None = None,
        use_cache: bool = False,
    ) -> tuple[Array, Array | None]:
        """``inputs [batch, length, embed]``, ``padding_mask [batch, length]`` (1 = token).

        With ``use_cache`` the EMA continues from ``state [batch, embed, ndim]`` (None: zeros) and returns the new
        state; a length-1 input takes the O(BDN) step. Returns ``(out [batch, length, embed], new_state or None)``.
        """
        if use_cache and self.bidirectional:
            raise ValueError("use_cache=True needs bidirectional=False: a bidirectional EMA has no incremental state")
        if use_cache and self.truncation is not None:
            raise ValueError("use_cache=True needs truncation=None: the cached state cannot represent a window")
        if state is not None and not use_cache:
            raise ValueError("state is only read when use_cache=True")
        channels = 2 * self.embed_dim if self.bidirectional else self.embed_dim
        normal = nn.initializers.normal
        names3 = (axes.EMBED, None, None)

        def hf_param(name, init, shape, names):
            return self.param(name, nn.with_logical_partitioning(init, names), shape, self.param_dtype)

        shape3 = (channels, self.ndim, 1)
        params = {
            "damping_factor": hf_param("damping_factor", normal(self.delta_alpha_range), shape3, names3)[..., 0],
            "decay_factor": hf_param("decay_factor", normal(self.delta_alpha_range), shape3, names3)[..., 0],
            "ema_expansion_matrix": hf_param("ema_expansion_matrix", _beta_init(self.beta_range), shape3,
                                             names3)[..., 0],
            "kernel_projection_matrix": hf_param("kernel_projection_matrix", normal(self.gamma_omega_range),
                                                 (channels, self.ndim), (axes.EMBED, None)),
            "residual_weight": hf_param("residual_weight", normal(self.gamma_omega_range), (self.embed_dim,),
                                        (axes.EMBED,)),
        }
        batch, length = inputs.shape[:2]
        shards = 1 if self.sequence_sharding is None or use_cache else self.sequence_sharding.shards
        algorithm = self.algorithm
        if algorithm == "chunked" and (length // shards) % self.chunk_size:
            algorithm = "fft"
        if use_cache and inputs.ndim == 3 and inputs.shape[1] == 1:
            # Any length-1 input is valid here, whatever the chunk size of the full-pass algorithm.
            _check_call(params, inputs, padding_mask, bidirectional=False, truncation=None, algorithm="scan",
                        chunk_size=1, state=state, return_state=True)
            mask_t = None if padding_mask is None else padding_mask[:, 0]
            out, new_state = damped_ema_step(params, inputs[:, 0], state, mask_t, dtype=self.dtype)
            out = out[:, None]
        elif shards > 1:
            from layers.sequence_parallel import call_sharded, sharded_damped_ema  # it imports this module

            out, new_state = call_sharded(
                sharded_damped_ema, self.sequence_sharding, batch, length, params, inputs, padding_mask,
                bidirectional=self.bidirectional, truncation=self.truncation, algorithm=algorithm,
                chunk_size=self.chunk_size, dtype=self.dtype, precision=self.precision)
        else:
            out, new_state = damped_ema(
                params, inputs, padding_mask, bidirectional=self.bidirectional, truncation=self.truncation,
                algorithm=algorithm, chunk_size=self.chunk_size, state=state, return_state=use_cache,
                dtype=self.dtype, precision=self.precision,
            )
        out = nn.with_logical_constraint(out, (axes.ACT_BATCH, axes.ACT_LENGTH, axes.ACT_EMBED))
        return out, new_state
