"""The doorway: HF checkpoint directories in and out, for every family.

    module, params = jaxmodels.from_pretrained("path/to/hf_dir")          # class from config.json
    out = module.apply({"params": params}, input_ids=ids, attention_mask=mask, deterministic=True)
    jaxmodels.save_pretrained(module, params, "out_dir")                  # HF from_pretrained loads it
    hf_tensors = jaxmodels.params_to_hf(module, grads)                    # {hf_name: np.ndarray}
    tokenizer = jaxmodels.tokenizer_from_pretrained("path/to/hf_dir")      # the family's tokenizer

Each family describes itself with one ``jaxmodels.registry.Family`` record (its ``FAMILY``); the class is chosen
from ``model_type`` + ``architectures[0]``. Families are imported lazily, so using one never imports the others.
"""

from __future__ import annotations

import warnings
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxmodels import hf_io, registry
from jaxmodels.registry import Family
from jaxmodels.tokenization import tokenizer_from_pretrained


def family(model_type: str) -> Family:
    """The ``Family`` record of an HF ``model_type``."""
    return registry.get(model_type)


def _family_of(module: nn.Module) -> Family:
    return registry.of_config(module.config)


def from_config(hf_config: dict[str, Any], *, dtype: Any = jnp.float32, architecture: str | None = None,
                strict: bool = False) -> nn.Module:
    """An uninitialised module for an HF config dict; the class is ``architecture`` or ``architectures[0]``.

    Keys that are neither fields of the family's config nor HF bookkeeping warn, naming them (``strict``: raise).
    """
    if not isinstance(hf_config, dict):
        raise ValueError(f"an HF config must be a dict (a JSON object), got {type(hf_config).__name__}")
    fam = family(hf_config.get("model_type"))
    config = fam.config_class.from_hf_dict(hf_config, strict=strict)
    arch = architecture or (hf_config.get("architectures") or [fam.default_architecture])[0]
    if arch not in fam.architectures:
        raise ValueError(f"architecture {arch!r} is not available for model_type={config.model_type!r}; "
                         f"available: {sorted(fam.architectures)}")
    return fam.architectures[arch](config=config, dtype=dtype)


def init_params(module: nn.Module, rng: jax.Array, *, boxed: bool = False) -> dict:
    """Fresh params for ``module`` (boxed with logical axis names if ``boxed``, else plain arrays)."""
    fam = _family_of(module)
    params = module.init(rng, **fam.dummy_inputs(module.config, type(module).__name__))["params"]
    return params if boxed else nn.unbox(params)


def abstract_params(module: nn.Module) -> dict:
    """ShapeDtypeStructs of the params, without allocating or computing them."""
    return jax.eval_shape(lambda: init_params(module, jax.random.PRNGKey(0)))


def params_to_hf(module: nn.Module, params: dict) -> dict:
    """Our params (or grads) -> ``{hf_name: np.ndarray}`` in torch layout: the tensors HF saves, plus any alias
    HF's loader needs to keep a tied tensor (see the family's ``key_fn``)."""
    return hf_io.params_to_state_dict(nn.unbox(params), _family_of(module).key_fn(module.config))


def from_pretrained(path: str, dtype: Any = jnp.float32, *, architecture: str | None = None,
                    rng: jax.Array | None = None, overrides: dict[str, Any] | None = None) -> tuple[nn.Module, dict]:
    """Loads an HF ``save_pretrained`` directory -> ``(module, params)`` with fp32 params and ``dtype`` compute.

    Params absent from the checkpoint (a classifier, or a pooler, on top of a pretraining checkpoint) are freshly
    initialised from ``rng`` with a warning naming them, as HF does; a checkpoint matching nothing is an error.
    ``overrides`` are config fields put over the checkpoint's ``config.json`` (a new head's ``num_labels``), as HF's
    ``from_pretrained(path, num_labels=3)``.
    """
    hf_config = {**hf_io.read_config(path), **(overrides or {})}
    module = from_config(hf_config, dtype=dtype, architecture=architecture)
    fam = _family_of(module)
    shapes = abstract_params(module)
    state_dict = hf_io.strip_or_add_prefix(hf_io.load_state_dict(path), fam.base_model_prefix,
                                           want_prefix=fam.base_model_prefix in shapes)
    params, missing, unexpected = hf_io.state_dict_to_params(state_dict, shapes, fam.key_fn(module.config))
    if not params:
        raise ValueError(f"checkpoint {path!r} holds none of the weights of {type(module).__name__} "
                         f"(first missing: {missing[:4]}); is it the right model_type?")
    if missing:
        warnings.warn(f"newly initialised (not in the checkpoint): {missing}", stacklevel=2)
        # Compiled: an eager init dispatches every op of every layer's init one by one (~2x slower for a tiny model).
        fresh = hf_io.flatten(jax.jit(lambda key: init_params(module, key))(
            rng if rng is not None else jax.random.PRNGKey(0)))
        flat = hf_io.flatten(params)
        params = hf_io.unflatten({p: flat.get(p, fresh[p]) for p in fresh})
    unexpected = [k for k in unexpected if k not in fam.tied_keys]
    if unexpected:
        warnings.warn(f"checkpoint tensors not used by {type(module).__name__}: {unexpected}", stacklevel=2)
    return module, jax.tree.map(jnp.asarray, params)


def save_pretrained(module: nn.Module, params: dict, path: str) -> None:
    """Writes ``config.json`` + ``model.safetensors`` that HF ``from_pretrained`` loads with equal outputs."""
    config = module.config.to_hf_dict()
    config["architectures"] = [type(module).__name__]
    config["torch_dtype"] = "float32"
    hf_io.save_directory(path, config, params_to_hf(module, params))


__all__ = ["Family", "tokenizer_from_pretrained", "from_pretrained", "from_config", "save_pretrained", "params_to_hf", "init_params",
           "abstract_params", "family"]
