"""Plain-text corpora as a TFDS dataset written in `array_record`: the embedded KJV, or local files.

A corpus is read as a sequence of *documents*. With `documents="paragraphs"` (the default) a document is a
run of non-blank lines ended by a blank line, stored with its lines joined by "\\n" (the embedded KJV has one
verse per line and a blank line between chapters, so a document is a chapter); with `documents="lines"`
every non-blank line is a document. Documents never span two files.

`TextCorpus` is a `tfds.core.GeneratorBasedBuilder` with one feature, `text` (a string), and two splits:
every `validation_every`-th document (counting from 1) goes to `validation`, the rest to `train` (a corpus
shorter than that gives its last document to `validation`; a one-document corpus has `train` only). Records
keep corpus order (`disable_shuffling`); the pipeline shuffles. Writing needs no TensorFlow.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import json
import lzma
import os
import re
from typing import Iterable, Iterator

import tensorflow_datasets as tfds
from etils import epath

EMBEDDED_CORPUS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus", "kjv.txt.xz")
EMBEDDED_NAME = "kjv"
DOCUMENT_MODES = ("paragraphs", "lines")
# Suffixes a directory source picks up; compressed ones are decompressed while reading.
TEXT_SUFFIXES = (".txt", ".txt.gz", ".txt.xz")


def open_text(path: str):
    """Opens a UTF-8 text file for streaming, decompressing `.gz` / `.xz` on the fly."""
    if path.endswith(".xz"):
        return lzma.open(path, "rt", encoding="utf-8")
    if path.endswith(".gz"):
        return gzip.open(path, "rt", encoding="utf-8")
    return open(path, "rt", encoding="utf-8")


def read_embedded_corpus() -> Iterator[str]:
    """Streams the lines (without line endings) of the embedded King James Bible, decompressing as it goes.

    One verse per line, a blank line between chapters; about 4.1 MB of text. See `corpus/README.md`.
    """
    with open_text(EMBEDDED_CORPUS) as f:
        for line in f:
            yield line.rstrip("\r\n")


def iter_documents(lines: Iterable[str], documents: str = "paragraphs") -> Iterator[str]:
    """Groups text lines into documents (see the module docstring); trailing whitespace is dropped."""
    if documents not in DOCUMENT_MODES:
        raise ValueError(f"documents={documents!r}: expected one of {DOCUMENT_MODES}")
    paragraph: list[str] = []
    for line in lines:
        line = line.rstrip()
        if documents == "lines":
            if line:
                yield line
        elif line:
            paragraph.append(line)
        elif paragraph:
            yield "\n".join(paragraph)
            paragraph = []
    if paragraph:
        yield "\n".join(paragraph)


def list_text_files(path: str) -> list[str]:
    """The files a local source reads, in reading order: `path` itself, or a directory's text files sorted."""
    full_path = os.path.abspath(os.path.expanduser(path))
    if os.path.isfile(full_path):
        return [full_path]
    if not os.path.isdir(full_path):
        raise ValueError(f"source={path!r}: no such file or directory")
    files = sorted(
        os.path.join(root, name)
        for root, _, names in os.walk(full_path)
        for name in names
        if name.endswith(TEXT_SUFFIXES)
    )
    if not files:
        raise ValueError(f"source={path!r}: the directory holds no {'/'.join(TEXT_SUFFIXES)} files")
    return files


@dataclasses.dataclass(eq=False)
class TextCorpusConfig(tfds.core.BuilderConfig):
    """Which text a `TextCorpus` reads. `paths=()` means the embedded corpus.

    Attributes:
      paths: text files, read in this order.
      documents: "paragraphs" or "lines" (see the module docstring).
      validation_every: every n-th document goes to the `validation` split.
    """

    paths: tuple[str, ...] = ()
    documents: str = "paragraphs"
    validation_every: int = 50

    def __post_init__(self):
        if self.documents not in DOCUMENT_MODES:
            raise ValueError(f"documents={self.documents!r}: expected one of {DOCUMENT_MODES}")
        if self.validation_every < 2:
            raise ValueError(f"validation_every={self.validation_every}: must be >= 2")

    def lines(self) -> Iterator[str]:
        """Streams the lines of the corpus; each file ends its last document."""
        if not self.paths:
            yield from read_embedded_corpus()
            return
        for path in self.paths:
            with open_text(path) as f:
                for line in f:
                    yield line.rstrip("\r\n")
            yield ""

    def count_documents(self) -> int:
        return sum(1 for _ in iter_documents(self.lines(), self.documents))

    def is_validation(self, index: int, num_documents: int) -> bool:
        """Whether document `index` belongs to `validation`; a corpus shorter than `validation_every`
        documents gives its last one, because TFDS refuses to write an empty split."""
        if num_documents < self.validation_every:
            return num_documents > 1 and index == num_documents - 1
        return index % self.validation_every == self.validation_every - 1

    def documents_of(self, split: str, num_documents: int) -> Iterator[tuple[int, str]]:
        """Yields `(document index in the corpus, text)` for the documents of `split`."""
        for index, text in enumerate(iter_documents(self.lines(), self.documents)):
            if self.is_validation(index, num_documents) == (split == "validation"):
                yield index, text


def local_config(path: str, documents: str = "paragraphs", validation_every: int = 50) -> TextCorpusConfig:
    """The config for a local file or directory, named `<slug>_<digest>`.

    The digest covers the absolute paths, sizes and modification times of the files plus the options, so
    editing a file yields a new dataset rather than a stale one; hashing contents would re-read the whole
    corpus on every start.
    """
    files = list_text_files(path)
    identity = {
        "files": [(f, os.stat(f).st_size, os.stat(f).st_mtime_ns) for f in files],
        "documents": documents,
        "validation_every": validation_every,
    }
    digest = hashlib.sha256(json.dumps(identity).encode()).hexdigest()[:12]
    stem = os.path.basename(os.path.abspath(os.path.expanduser(path)).rstrip(os.sep))
    slug = re.sub(r"[^a-z0-9]+", "_", stem.lower().split(".")[0]).strip("_")[:40] or "corpus"
    return TextCorpusConfig(
        name=f"{slug}_{digest}",
        description=f"Local text from {path} ({len(files)} file(s)).",
        paths=tuple(files),
        documents=documents,
        validation_every=validation_every,
    )


class TextCorpus(tfds.core.GeneratorBasedBuilder):
    """Documents of a plain-text corpus, one `text` string per record (see the module docstring)."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}
    BUILDER_CONFIGS = [
        TextCorpusConfig(
            name=EMBEDDED_NAME,
            description="King James Bible (public domain), one chapter per document, from Debian bible-kjv.",
        )
    ]
    DEFAULT_CONFIG_NAME = EMBEDDED_NAME

    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls) -> epath.Path:
        # TFDS 4.9.10 finds a packaged builder's file through `importlib_resources`, which it only installs
        # on Python < 3.9, so `download_and_prepare` fails without it (tensorflow/datasets#11212).
        return epath.Path(os.path.abspath(__file__))

    def _info(self) -> tfds.core.DatasetInfo:
        # Built directly rather than with `dataset_info_from_configs`, which reads metadata files from this
        # package's folder.
        return tfds.core.DatasetInfo(
            builder=self,
            description=self.builder_config.description,
            features=tfds.features.FeaturesDict({"text": tfds.features.Text()}),
            disable_shuffling=True,
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # Nothing to download: the text is local.
        num_documents = self.builder_config.count_documents()
        if num_documents == 0:
            raise ValueError(f"source={self.builder_config.paths}: the text holds no documents")
        splits = ("train", "validation") if num_documents > 1 else ("train",)
        return {split: self._generate_examples(split, num_documents) for split in splits}

    def _generate_examples(self, split: str, num_documents: int):
        for index, text in self.builder_config.documents_of(split, num_documents):
            yield index, {"text": text}


def prepare_text_corpus(config: TextCorpusConfig, data_dir: str | None = None) -> str:
    """Writes the corpus as `array_record` under `data_dir` unless already there; returns its TFDS name.

    Returns:
      "text_corpus/<config name>:<version>", which `tfds.data_source` opens by name.
    """
    builder = TextCorpus(config=config, data_dir=data_dir, file_format="array_record")
    if not builder.is_prepared():
        builder.download_and_prepare()
    return f"{builder.name}/{config.name}:{builder.version}"

