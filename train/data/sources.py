"""Resolving a source string to a random-access split of documents read through `tfds.data_source`."""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Mapping, Sequence

import tensorflow_datasets as tfds

from train.data import text_corpus

EMBEDDED_ALIASES = (text_corpus.EMBEDDED_NAME, "embedded")


@dataclasses.dataclass(frozen=True, eq=False)
class TextSource:
    """The documents of one split of a prepared TFDS dataset: `len(source)`, `source[i] -> str`.

    Attributes:
      name: the TFDS name with version ("text_corpus/kjv:1.0.0"); `open_source(name)` reopens it.
      split: the split read (TFDS slicing such as "train[:10%]" works).
      text_key: the feature holding the text.
      data_dir: the TFDS data directory (None: TFDS's default).
      records: the `tfds.data_source` object (random access to decoded feature dicts).
    """

    name: str
    split: str
    text_key: str
    data_dir: str | None
    records: Sequence[Mapping[str, Any]]

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> str:
        value = self.records[index][self.text_key]
        return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _looks_like_path(source: str) -> bool:
    # A TFDS name never starts like this, so a missing path gets "no such file" rather than "no dataset".
    return source.startswith(("/", "./", "../", "~")) or source.endswith(text_corpus.TEXT_SUFFIXES)


def open_source(
    source: str = text_corpus.EMBEDDED_NAME,
    *,
    split: str = "train",
    data_dir: str | None = None,
    text_key: str = "text",
    documents: str = "paragraphs",
) -> TextSource:
    """Opens one split of a text corpus for random access, preparing it first when it is ours.

    Args:
      source: one of
        - "kjv" (or "embedded"): the embedded King James Bible, written to `data_dir` on first use;
        - a path to a local text file or directory of `.txt` (`.txt.gz`, `.txt.xz`) files, written to
          `data_dir` on first use (re-written when a file's size or modification time changes);
        - a TFDS name ("name", "name/config", "name/config:version", optionally prefixed "tfds:") of a
          dataset already prepared in `data_dir` in the `array_record` format; nothing is downloaded.
      split: split to read ("train", "validation", or any split / slice the dataset has).
      data_dir: TFDS data directory; None means TFDS's default (`$TFDS_DATA_DIR` or ~/tensorflow_datasets).
      text_key: feature of a catalog dataset holding the text (ours is always "text").
      documents: for local sources, "paragraphs" (blank lines separate documents) or "lines".

    Raises:
      ValueError: naming the argument, when the path does not exist, the dataset is not prepared or not in
        `array_record`, the split is missing, or `text_key` is not one of its features.
    """
    if not isinstance(source, str) or not source:
        raise ValueError(f"source={source!r}: expected a non-empty string")
    if source in EMBEDDED_ALIASES:
        config = text_corpus.TextCorpus.builder_configs[text_corpus.EMBEDDED_NAME]
        name = text_corpus.prepare_text_corpus(config, data_dir)
    elif os.path.exists(os.path.expanduser(source)) or _looks_like_path(source):
        config = text_corpus.local_config(source, documents=documents)
        name = text_corpus.prepare_text_corpus(config, data_dir)
    else:
        name = source.removeprefix("tfds:")
    return _open_prepared(name, split=split, data_dir=data_dir, text_key=text_key)


def _open_prepared(name: str, *, split: str, data_dir: str | None, text_key: str) -> TextSource:
    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except Exception as error:  # TFDS raises several types for unknown names and versions.
        raise ValueError(
            f"source={name!r}: not a local path and not a TFDS dataset found in data_dir={data_dir!r} "
            f"({str(error).splitlines()[0]})"
        ) from error
    if not builder.is_prepared():
        raise ValueError(
            f"source={name!r}: the dataset is not prepared in data_dir={data_dir!r}; nothing is downloaded "
            f"here, so prepare it first, e.g. `tfds build {name} --file_format=array_record`"
        )
    if builder.info.file_format != tfds.core.FileFormat.ARRAY_RECORD:
        raise ValueError(
            f"source={name!r}: prepared as {builder.info.file_format.value}, but random access needs "
            "array_record; rebuild it with `--file_format=array_record`"
        )
    features = builder.info.features
    if text_key not in features:
        raise ValueError(f"text_key={text_key!r}: {name!r} has features {sorted(features.keys())}")
    try:
        records = tfds.data_source(name, split=split, data_dir=data_dir, download=False)
    except Exception as error:  # Unknown split names surface as various TFDS errors.
        raise ValueError(
            f"split={split!r}: cannot read it from {name!r} (splits: {sorted(builder.info.splits.keys())}): "
            f"{error}"
        ) from error
    full_name = f"{builder.name}/{builder.builder_config.name}" if builder.builder_config else builder.name
    return TextSource(
        name=f"{full_name}:{builder.version}",
        split=split,
        text_key=text_key,
        data_dir=data_dir,
        records=records,
    )
