"""Setting keys of an experiment config by their dotted names, as `--config.data.buckets=...` does on the command
line (tests only)."""

from __future__ import annotations

from typing import Any, Mapping


def set_keys(config, changes: Mapping[str, Any]):
    """Sets each dotted key (`"data.schema.text"`) of `config` to its value, whatever the key's type was; a key the
    config lacks is added (for the tests of unknown keys). Returns `config`."""
    with config.ignore_type():
        for key, value in changes.items():
            node = config
            *parents, leaf = key.split(".")
            for parent in parents:
                node = node[parent]
            with node.unlocked():
                node[leaf] = value
    return config
