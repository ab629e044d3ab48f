"""Params as Orbax checkpoints: the form pod runs start from (``--config.init_from``) and ``python -m train`` writes.

Two layouts are read, both restored straight into the shardings asked for (each process reads only its devices'
blocks), so a checkpoint written on one mesh loads on any other:

    OUT/config.json            an Orbax params directory (``save_params``; ``python -m jaxmodels.convert``): the HF
    OUT/params/...             config beside an Orbax PyTree ``{"params": tree}``

    RUN/checkpoints/<step>/    a training run's checkpoint (``train/checkpoint.py``): ``state`` holds
        state/ metadata/       ``{"step", "params", "opt_state"}``, ``metadata`` the run's JSON with the model config;
                               only the params are read (Orbax partial restore), never the optimizer state

Nothing is half-written: ``save_params`` writes into a temporary directory beside the target and renames it.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from typing import Any

from jaxmodels import hf_io

PARAMS_DIR = "params"
_RUN_CHECKPOINTS = "checkpoints"


def is_params_directory(path: str) -> bool:
    """Whether ``path`` is an Orbax params directory (``config.json`` beside ``params/``)."""
    return os.path.isfile(os.path.join(path, hf_io.CONFIG_NAME)) and os.path.isdir(os.path.join(path, PARAMS_DIR))


def _complete_steps(directory: str) -> list[int]:
    """Steps of a run's ``checkpoints/`` whose save finished (Orbax renames a step's directory only when done)."""
    if not os.path.isdir(directory):
        return []
    return sorted(int(name) for name in os.listdir(directory) if name.isdigit()
                  and os.path.isdir(os.path.join(directory, name, "state"))
                  and os.path.isdir(os.path.join(directory, name, "metadata")))


def training_checkpoint(path: str) -> str | None:
    """The step directory ``path`` names: itself (``RUN/checkpoints/<step>``), or the newest complete step of a run
    (``RUN`` or ``RUN/checkpoints``); None when ``path`` is neither."""
    if os.path.isdir(os.path.join(path, "state")) and os.path.isdir(os.path.join(path, "metadata")):
        return path
    for directory in (os.path.join(path, _RUN_CHECKPOINTS), path):
        steps = _complete_steps(directory)
        if steps:
            return os.path.join(directory, str(steps[-1]))
    return None


def is_orbax(path: str) -> bool:
    """Whether ``path`` is one of the two layouts this module reads."""
    return os.path.isdir(path) and (is_params_directory(path) or training_checkpoint(path) is not None)


def read_config(path: str) -> dict[str, Any]:
    """The HF config dict of an Orbax params directory or a training checkpoint (its run metadata's ``model``)."""
    if is_params_directory(path):
        return hf_io.read_config(path)
    step = training_checkpoint(path)
    if step is None:
        raise ValueError(f"{path!r}: neither an Orbax params directory (config.json + params/) nor a training run's "
                         "checkpoint (checkpoints/<step>/{state,metadata})")
    file = os.path.join(step, "metadata", "metadata")
    metadata = hf_io.read_json(file, "a training checkpoint's metadata")
    model = metadata.get("model") if isinstance(metadata, dict) else None
    if not isinstance(model, dict) or "model_type" not in model:
        raise ValueError(f"{file}: has no 'model' config with a 'model_type'; which model it holds is unknown")
    return dict(model)


def restore_params(path: str, target: dict, prefix: str | None = None,
                   renames: tuple = ()) -> tuple[dict, list[str], list[str]]:
    """The params of an Orbax params directory or a training checkpoint that ``target`` asks for: ``target`` is a
    tree of ``jax.ShapeDtypeStruct`` with shardings, and each leaf the checkpoint holds is read straight into its
    sharding (Orbax partial restore: nothing else is read). ``prefix`` bridges HF's ``base_model_prefix`` as for HF
    directories (a bare model's params have no ``albert`` level, a head's have it). ``renames``: ``(prefix,
    checkpoint_prefix)`` pairs (``Family.checkpoint_renames``): a param under ``prefix`` is read from under
    ``checkpoint_prefix``, the first matching pair winning, before the ``prefix`` bridge.

    Returns ``(params, missing, unexpected)`` like ``hf_io.state_dict_to_params``: the leaves found (a tree shaped
    like ``target`` without the missing ones), the paths of the missing leaves, and the checkpoint's unused paths.
    A leaf found with another shape is a ``ValueError`` naming it.
    """
    import orbax.checkpoint as ocp

    step = None if is_params_directory(path) else training_checkpoint(path)
    directory = os.path.join(path, PARAMS_DIR) if step is None else os.path.join(step, "state")
    with ocp.PyTreeCheckpointer() as checkpointer:  # closed: no Orbax thread outlives the call
        return _restore(checkpointer, directory, target, prefix, renames)


def _restore(checkpointer, directory: str, target: dict, prefix: str | None,
             renames: tuple = ()) -> tuple[dict, list[str], list[str]]:
    import orbax.checkpoint as ocp

    try:
        stored = hf_io.flatten(_as_dict(checkpointer.metadata(directory).item_metadata.tree["params"]))
    except Exception as error:  # noqa: BLE001 - any failure to read the tree means an unusable checkpoint
        raise ValueError(f"{directory}: not a readable Orbax checkpoint with params ({_first_line(error)})") from None
    wanted = hf_io.flatten(target)
    has = prefix is not None and any(p[0] == prefix for p in stored)
    want = prefix is not None and any(p[0] == prefix for p in wanted)

    def stored_path(p):
        for ours, theirs in renames:
            if p[:len(ours)] == tuple(ours):
                return tuple(theirs) + p[len(ours):]
        if want and not has:
            return p[1:] if p[0] == prefix else None
        if has and not want:
            return (prefix,) + p
        return p

    found, chosen, missing = {}, {}, []
    for p, spec in wanted.items():
        s = stored_path(p)
        if s is None or s not in stored:
            missing.append("/".join(p))
            continue
        if tuple(stored[s].shape) != tuple(spec.shape):
            raise ValueError(f"{directory}: params/{'/'.join(s)} has shape {tuple(stored[s].shape)}, which does not "
                             f"fit {'/'.join(p)} {tuple(spec.shape)} as the config implies")
        found[s], chosen[p] = spec, s
    unexpected = sorted("/".join(s) for s in set(stored) - set(found))
    if not found:
        return {}, missing, unexpected
    item = {"params": hf_io.unflatten(found)}
    try:
        restored = checkpointer.restore(directory, args=ocp.args.PyTreeRestore(
            item=item, restore_args=ocp.checkpoint_utils.construct_restore_args(item), partial_restore=True))
    except Exception as error:  # noqa: BLE001
        raise ValueError(f"{directory}: the params could not be read ({_first_line(error)}); the copy may be "
                         "incomplete") from None
    leaves = hf_io.flatten(restored["params"])
    return hf_io.unflatten({p: leaves[s] for p, s in chosen.items()}), missing, unexpected


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return f"{type(error).__name__}: {text.splitlines()[0][:200]}" if text else type(error).__name__


def _as_dict(tree):
    """Orbax's metadata tree (dicts, and lists for sequences) as nested dicts keyed by str."""
    if isinstance(tree, dict):
        return {str(k): _as_dict(v) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return {str(i): _as_dict(v) for i, v in enumerate(tree)}
    return tree


def check_empty_target(path: str) -> None:
    """A conversion never writes into a directory that holds something (it would mix two checkpoints)."""
    if os.path.exists(path) and (not os.path.isdir(path) or os.listdir(path)):
        raise ValueError(f"{path!r} exists and is not an empty directory; choose a new output directory")


def write_atomically(path: str, write) -> None:
    """``write(tmp)`` fills a temporary directory beside ``path``, which is renamed to ``path`` only when complete
    (a failure or an interruption leaves no ``path``, and the temporary directory is removed)."""
    check_empty_target(path)
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(os.path.abspath(path))}.tmp-", dir=parent)
    try:
        write(tmp)
        if os.path.isdir(path):
            os.rmdir(path)  # empty (checked above); os.rename cannot replace it on every platform
        os.rename(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def save_params(config: dict[str, Any], params: dict, path: str) -> None:
    """Writes an Orbax params directory: ``config.json`` (the HF config) and ``params/`` (``{"params": params}``)."""
    import orbax.checkpoint as ocp

    def write(tmp: str) -> None:
        with open(os.path.join(tmp, hf_io.CONFIG_NAME), "w") as f:
            json.dump(config, f, indent=2, sort_keys=True)
        with ocp.PyTreeCheckpointer() as checkpointer:
            checkpointer.save(os.path.join(tmp, PARAMS_DIR), args=ocp.args.PyTreeSave({"params": params}))

    write_atomically(path, write)
