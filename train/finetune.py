"""Fine-tuning a task head: the run's labelled files, their tokenizer, training batches and evaluation.

    task = TaskData(experiment)                       # reads, tokenizes and checks both files
    batches = task.train_batches(batch_size=32, seed=0)
    evaluate = TaskEvaluator(task, module, experiment.objective, mesh, rules, param_shardings, key)
    metrics = evaluate(params)                        # {"loss": ..., "accuracy": ..., ...} on the whole eval file

Which tokenizer (`config.data.tokenizer`): an HF tokenizer directory (`jaxmodels.tokenizer_from_pretrained`), a
SentencePiece `.model` file, or "" for `config.init_from`'s tokenizer when the run starts from a checkpoint and
otherwise a SentencePiece model trained on the train file's text (`train.data.tokenizer`, cached by the file's
contents) with `[CLS]` / `[SEP]` and the `BERT` template: a model trained from scratch needs no download.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any, Callable

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from train import distributed, partitioning, task_metrics
from train.data import sources, task_features
from train.data import tokenizer as tokenizers
from train.data.labelled import file_digest
from train.data.task_batches import Collate, TaskBatches, eval_batches
from train.data.task_features import IGNORE_INDEX, TaskSplit


def tokenizer_texts(split_rows, spec) -> list[str]:
    """Every text of the rows a tokenizer trained for them must cover (texts, words, questions, contexts,
    choices, sources and targets), one document each."""
    texts = []
    for row in split_rows:
        for role, field in spec.fields.items():
            if role in ("text", "text_pair", "question", "context", "source", "target"):
                texts.append(task_features.text_of(row, field))
            elif role in ("tokens", "choices"):
                texts.append(" ".join(task_features.strings_of(row, field, role)))
    return texts


def load_task_tokenizer(config, spec, train_rows, tokenizer: str | None = None) -> tuple[str, Any]:
    """`(what it was loaded from, tokenizer)` for `config.data.tokenizer` (see the module docstring), or for
    `tokenizer` when given (the one a stored run used)."""
    import jaxmodels

    given = tokenizer if tokenizer is not None else config.data.tokenizer
    path = given or config.init_from
    key = "data.tokenizer" if given else "init_from"
    if path:
        try:
            if os.path.isdir(path):
                return path, jaxmodels.tokenizer_from_pretrained(path)
            return path, tokenizers.task_tokenizer(path)
        except ValueError as error:
            raise ValueError(f"config.{key}={path!r}: no tokenizer there ({error}); name one with "
                             "config.data.tokenizer (an HF tokenizer directory or a SentencePiece .model)") from None
    records = [{"text": t} for t in tokenizer_texts(train_rows, spec) if t.strip()]
    if not records:
        raise ValueError(f"config.data.train_file={spec.train_file!r}: holds no text to train a tokenizer on")
    digest = file_digest(spec.train_file)
    stem = os.path.splitext(os.path.basename(spec.train_file))[0]
    # Named by the file's contents and the fields read: the cache serves the same text, never an edited one.
    fields = hashlib.sha256(json.dumps(sorted(spec.fields.items())).encode()).hexdigest()[:8]
    name = f"task_file/{stem}_{digest}_{fields}:1.0.0"
    source = sources.TextSource(name=name, split="train", text_key="text", data_dir=None, records=records)
    with distributed.primary_first("tokenizer"):
        model = tokenizers.build_tokenizer(source, vocab_size=config.data.vocab_size,
                                           cache_dir=config.data.cache_dir or None)
    return model, tokenizers.task_tokenizer(model)


def check_seq2seq_tokens(model: dict, tokenizer, source) -> None:
    """The model's special ids must be the tokenizer's: targets end with the template's last token, where generation
    stops (`eos_token_id`), and are padded with `pad_token_id`. Raises ValueError naming the config key."""
    end = task_features.end_token_id(tokenizer)
    wanted = {"eos_token_id": (end, "ends every text with"), "pad_token_id": (tokenizer.pad_token_id, "pads with"),
              "forced_eos_token_id": (end, "ends every text with")}
    for key, (want, what) in wanted.items():
        if key == "forced_eos_token_id" and model.get(key) is None:
            continue  # no forced end: nothing to agree on
        if want is not None and model.get(key) != want:
            raise ValueError(f"config.model.{key}={model.get(key)!r}: the tokenizer ({source}) {what} id {want}; "
                             f"set config.model.{key}={want}")


class TaskData:
    """The train and eval splits of a fine-tuning run, tokenized and checked (`train.data.task_features`).

    Attributes: `spec`, `tokenizer`, `tokenizer_source` (what `config.data.tokenizer` resolved to: stored in the
    checkpoints, so `python -m train.evaluate` reloads the same one), `train`, `eval` (None without an eval file),
    `notes` (counted warnings to show), `collate` (padding to the buckets), `token_keys`.
    """

    def __init__(self, exp, *, tokenizer_source: str | None = None):
        spec = exp.task
        self.spec = spec
        train_rows = task_features.read_task_rows(spec, spec.train_file, "data.train_file")
        # A stored run (`tokenizer_source`) reloads exactly the tokenizer it trained with.
        self.tokenizer_source, self.tokenizer = load_task_tokenizer(exp.config, spec, train_rows, tokenizer_source)
        vocab = exp.model.get("vocab_size")
        if isinstance(vocab, int) and len(self.tokenizer) > vocab:
            raise ValueError(f"config.model.vocab_size={vocab}: the tokenizer ({self.tokenizer_source}) has "
                             f"{len(self.tokenizer)} ids; is config.data.tokenizer the model's tokenizer?")
        self.train = task_features.build_split(train_rows, spec, self.tokenizer)
        self.eval = None
        if spec.eval_file:
            eval_rows = task_features.read_task_rows(spec, spec.eval_file, "data.eval_file")
            self.eval = task_features.build_split(eval_rows, spec, self.tokenizer,
                                                  label_names=self.train.label_names, is_train=False)
        self.notes = self.train.notes + (self.eval.notes if self.eval else [])
        labels = ("labels",) if spec.kind in (task_features.TOKEN_CLASSIFICATION, task_features.SEQ2SEQ) else ()
        self.token_keys = ("input_ids", "attention_mask", "token_type_ids") + labels
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        # A seq2seq target has a length of its own: one static decoder length, whatever the source's bucket.
        fixed = {"labels": spec.max_target_length} if spec.kind == task_features.SEQ2SEQ else None
        self.collate = Collate(spec.buckets, self.token_keys, {"input_ids": pad, "labels": IGNORE_INDEX}, fixed)
        if spec.kind == task_features.SEQ2SEQ:
            check_seq2seq_tokens(exp.model, self.tokenizer, self.tokenizer_source)
        self._identity = {"train_file": os.path.abspath(spec.train_file), "digest": file_digest(spec.train_file),
                          "kind": spec.kind, "fields": dict(spec.fields), "features": len(self.train.features),
                          "tokenizer": str(self.tokenizer_source)}

    def train_batches(self, *, batch_size: int, seed: int) -> TaskBatches:
        """Endless shuffled batches of the train split; this process's rows of each global batch."""
        return TaskBatches(self.train.features, batch_size=batch_size, seed=seed, collate=self.collate,
                           identity=self._identity, process_index=jax.process_index(),
                           process_count=jax.process_count())

    def shardings(self, mesh, rules, batch: dict) -> dict:
        return partitioning.batch_shardings(mesh, rules, batch, self.token_keys)


class TaskEvaluator:
    """`evaluator(params) -> metrics` of the whole eval split (`train.task_metrics.score`), predicting in batches
    of `batch_size` rows with the objective's `predict` under `jit` (one compile per bucket length)."""

    def __init__(self, task: TaskData, module, objective, mesh, rules, params_shardings, key: jax.Array, *,
                 batch_size: int, check: Callable[[dict], dict] | None = None):
        if task.eval is None:
            raise ValueError("config.data.eval_file: no held-out file to evaluate on")
        self.task, self.mesh, self.rules = task, mesh, rules
        self.module = module
        self.batch_size = batch_size
        self.check = check or (lambda batch: batch)
        replicated = NamedSharding(mesh, PartitionSpec())
        self._predict = None
        self._make = lambda shardings: jax.jit(
            lambda params, batch: objective.predict(module, params, batch, key),
            in_shardings=(params_shardings, shardings), out_shardings=replicated)

    def outputs(self, params) -> list[dict[str, np.ndarray]]:
        """One dict of unpadded host arrays per eval feature (`logits`, or `start_logits` / `end_logits`)."""
        split: TaskSplit = self.task.eval
        kind = self.task.spec.kind
        outputs = []
        with partitioning.activate(self.mesh, self.rules):
            for batch, real in eval_batches(split.features, batch_size=self.batch_size, collate=self.task.collate,
                                            process_index=jax.process_index(), process_count=jax.process_count()):
                shardings = self.task.shardings(self.mesh, self.rules, batch)
                if self._predict is None:
                    self._predict = self._make(shardings)
                device_batch = partitioning.put_batch(self.check(batch), shardings)
                out = self._predict(params, device_batch)
                # Replicated on every device: any process reads the whole batch from its first local copy.
                out = {k: np.asarray(v.addressable_shards[0].data) for k, v in out.items()}
                if kind == task_features.SEQ2SEQ:
                    out["prediction"] = self.generate(params, device_batch)
                for i in range(real):
                    feature = split.features[len(outputs)]
                    length = feature["input_ids"].shape[-1]
                    outputs.append({k: _unpad(kind, v[i], length) for k, v in out.items()})
        return outputs

    def generate(self, params, batch: dict) -> np.ndarray:
        """Seq2seq: the text each row of `batch` decodes to by beam search (`config.data.num_beams`), special tokens
        left out; `[batch]` strings."""
        from jax.experimental import multihost_utils

        from jaxmodels import generation

        spec = self.task.spec
        tokens = generation.generate(self.module, params, batch["input_ids"], attention_mask=batch["attention_mask"],
                                     num_beams=spec.num_beams, max_length=spec.max_target_length + 1)
        tokens = np.asarray(multihost_utils.process_allgather(tokens, tiled=True))
        # A model whose vocabulary is larger than its tokenizer's (one trained from scratch on a small file) may
        # generate ids the tokenizer cannot write: they read as the unknown token (a wrong word).
        unknown = self.task.tokenizer.unk_token_id
        tokens = np.where(tokens < len(self.task.tokenizer), tokens, 0 if unknown is None else unknown)
        return np.asarray(self.task.tokenizer.batch_decode(tokens, skip_special_tokens=True), dtype=object)

    def __call__(self, params) -> dict[str, Any]:
        return task_metrics.score(self.task.eval, self.outputs(params), self.task.spec)


def _unpad(kind: str, value: np.ndarray, length: int) -> np.ndarray:
    """A feature's output without the positions its batch was padded with (outputs over tokens only)."""
    if kind in (task_features.TOKEN_CLASSIFICATION, task_features.QUESTION_ANSWERING):
        return value[:length]
    return value
