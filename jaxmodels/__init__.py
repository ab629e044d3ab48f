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

from jaxmodels import hf_io, hub, orbax_io, registry, sharding
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
    inputs = _family_of(module).dummy_inputs(module.config, type(module).__name__)
    # Jitted: XLA drops the dummy forward pass that only the param shapes need, where eager init would run it op
    # by op (2-3x slower for a small scanned model, and it holds the activations). Values equal eager init's to
    # the last bit or two of the initialisers' arithmetic.
    params = jax.jit(lambda key: module.init(key, **inputs)["params"])(rng)
    return params if boxed else nn.unbox(params)


def abstract_params(module: nn.Module, *, boxed: bool = False) -> dict:
    """ShapeDtypeStructs of the params (boxed with their logical axis names if ``boxed``), without allocating or
    computing them."""
    return jax.eval_shape(lambda: init_params(module, jax.random.PRNGKey(0), boxed=boxed))


def params_to_hf(module: nn.Module, params: dict) -> dict:
    """Our params (or grads) -> ``{hf_name: np.ndarray}`` in torch layout: the tensors HF saves, plus any alias
    HF's loader needs to keep a tied tensor (see the family's ``key_fn``)."""
    return hf_io.params_to_state_dict(nn.unbox(params), _family_of(module).key_fn(module.config))


def from_pretrained(name_or_path: str, dtype: Any = jnp.float32, *, architecture: str | None = None,
                    rng: jax.Array | None = None, mesh: jax.sharding.Mesh | None = None, rules=None,
                    revision: str | None = None, cache_dir: str | None = None,
                    local_files_only: bool | None = None, token: str | bool | None = None,
                    overrides: dict[str, Any] | None = None) -> tuple[nn.Module, dict]:
    """An HF checkpoint -> ``(module, params)`` with fp32 params and ``dtype`` compute.

    ``name_or_path``: a ``save_pretrained`` directory, an Orbax checkpoint (a ``save_orbax`` / ``python -m
    jaxmodels.convert`` directory, or a training run's ``checkpoints/<step>``: see ``jaxmodels.orbax_io``), or a Hub
    model id (``"albert/albert-base-v2"``) resolved
    through ``huggingface_hub``'s cache (``revision``, ``cache_dir``, ``local_files_only`` / ``HF_HUB_OFFLINE``,
    ``token``); an existing local directory wins.

    ``mesh`` (and ``rules``, default ``jaxmodels.sharding.DEFAULT_RULES``): every param is made directly in its
    ``NamedSharding``, each device's block read from the checkpoint by slice (safetensors lazily, a torch ``.bin``
    memory-mapped; Orbax by partial restore), so the host never holds the whole model; without a mesh an HF
    checkpoint is read whole.

    Params absent from the checkpoint (a classifier, or a pooler, on top of a pretraining checkpoint) are freshly
    initialised from ``rng`` with a warning naming them, as HF does; a checkpoint matching nothing is an error.
    ``overrides`` are config fields put over the checkpoint's ``config.json`` (a new head's ``num_labels``), as HF's
    ``from_pretrained(path, num_labels=3)``. An Orbax checkpoint of another of the family's classes is read where
    the family's ``checkpoint_renames`` puts its weights (a REALM pretraining run's ``encoder`` as the open-QA
    ``reader``).
    """
    path = hub.resolve(name_or_path, revision=revision, cache_dir=cache_dir, local_files_only=local_files_only,
                       token=token, files=hub.MODEL_FILES)
    with hub.naming(name_or_path, path):
        return _load_directory(path, dtype, architecture, rng, mesh, rules, overrides)


def _load_directory(path, dtype, architecture, rng, mesh, rules, overrides) -> tuple[nn.Module, dict]:
    orbax = orbax_io.is_orbax(path)
    stored = orbax_io.read_config(path) if orbax else hf_io.read_config(path)
    hf_config = {**stored, **(overrides or {})}
    module = from_config(hf_config, dtype=dtype, architecture=architecture)
    fam = _family_of(module)
    # Another class of the family may keep the same weights under other names (REALM's pretraining `encoder` is
    # the open-QA `reader`): the family says where this class finds them.
    checkpoint_arch = (stored.get("architectures") or [fam.default_architecture])[0]
    renames = fam.checkpoint_renames(checkpoint_arch, type(module).__name__) if orbax else ()
    key_fn = fam.key_fn(module.config)
    if mesh is None and not orbax:  # the whole checkpoint in host memory, converted in one piece
        shapes = abstract_params(module)
        state_dict = hf_io.strip_or_add_prefix(hf_io.load_state_dict(path), fam.base_model_prefix,
                                               want_prefix=fam.base_model_prefix in shapes)
        params, missing, unexpected = hf_io.state_dict_to_params(state_dict, shapes, key_fn)
        shardings = None
    else:
        boxed = abstract_params(module, boxed=True)
        if mesh is None:  # an Orbax checkpoint read onto the default device
            shardings = jax.tree.map(lambda _: jax.sharding.SingleDeviceSharding(jax.devices()[0]), nn.unbox(boxed))
        else:
            shardings = sharding.param_shardings(boxed, mesh, sharding.DEFAULT_RULES if rules is None else rules)
        shapes = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, jnp.float32, sharding=s),
                              nn.unbox(boxed), shardings)
        if orbax:
            params, missing, unexpected = orbax_io.restore_params(path, shapes, fam.base_model_prefix, renames)
        else:
            source = hf_io.LazyStateDict(path)
            lookup = hf_io.prefixed_names(source.keys(), fam.base_model_prefix,
                                          want_prefix=fam.base_model_prefix in shapes)
            params, missing, unexpected = hf_io.sharded_params(source, shapes, key_fn, lookup)
    if not params:
        raise ValueError(f"checkpoint {path!r} holds none of the weights of {type(module).__name__} "
                         f"(first missing: {missing[:4]}); is it the right model_type?")
    if missing:
        warnings.warn(f"newly initialised (not in the checkpoint): {missing}", stacklevel=3)
        have = hf_io.flatten(params)

        # Compiled, and only the missing leaves are returned (XLA drops the rest of the init): an eager init
        # dispatches every op of every layer's init one by one (~2x slower for a tiny model).
        def fresh_leaves(key):
            fresh = hf_io.flatten(init_params(module, key))
            return {"/".join(p): v for p, v in fresh.items() if p not in have}

        out_shardings = None if shardings is None else \
            {"/".join(p): s for p, s in hf_io.flatten(shardings).items() if p not in have}
        fresh = jax.jit(fresh_leaves, out_shardings=out_shardings)(rng if rng is not None else jax.random.PRNGKey(0))
        merged = {**have, **{tuple(k.split("/")): v for k, v in fresh.items()}}
        params = hf_io.unflatten({p: merged[p] for p in hf_io.flatten(shapes)})  # in the init's order
    unexpected = [k for k in unexpected if k not in fam.tied_keys]
    if unexpected:
        warnings.warn(f"checkpoint tensors not used by {type(module).__name__}: {unexpected}", stacklevel=3)
    return module, jax.tree.map(jnp.asarray, params)


def save_pretrained(module: nn.Module, params: dict, path: str, *,
                    max_shard_size: int | str = hf_io.MAX_SHARD_BYTES) -> None:
    """Writes ``config.json`` + ``model.safetensors`` that HF ``from_pretrained`` loads with equal outputs; above
    ``max_shard_size`` (bytes, or HF's ``"5GB"`` / ``"500MB"`` strings) the weights go to shards
    ``model-0000i-of-0000n.safetensors`` with HF's ``model.safetensors.index.json``."""
    config = module.config.to_hf_dict()
    config["architectures"] = [type(module).__name__]
    config["torch_dtype"] = "float32"
    hf_io.save_directory(path, config, params_to_hf(module, params),
                         max_shard_bytes=hf_io.parse_size(max_shard_size))


def save_orbax(module: nn.Module, params: dict, path: str) -> None:
    """Writes an Orbax params directory (``config.json`` + ``params/``) that ``from_pretrained`` and
    ``python -m train --config.init_from`` read onto any mesh; refused if ``path`` holds anything, and written into
    a temporary directory renamed when complete."""
    config = module.config.to_hf_dict()
    config["architectures"] = [type(module).__name__]
    orbax_io.save_params(config, nn.unbox(params), path)


__all__ = ["Family", "tokenizer_from_pretrained", "from_pretrained", "from_config", "save_pretrained", "save_orbax", "params_to_hf", "init_params",
           "abstract_params", "family"]
