"""The training run: config -> data, model, optimizer -> steps, logs, evals, checkpoints -> summary.

    summary = run(config, workdir)     # what `python -m train` calls

Pretraining objectives read a text corpus (`train.data`); fine-tuning objectives read the user's labelled files
(`train.finetune`), evaluate on the whole eval file with the task's metrics and keep the best checkpoint by one of
them in `DIR/best/` besides the latest ones in `DIR/checkpoints/`.

A run resumes from the latest complete checkpoint in `workdir` (state, data-iterator position, RNG by step),
so rerunning the same command after any interruption continues on exactly the loss trajectory of a run
that was never interrupted. SIGTERM (preemption) finishes the current step, saves, and returns normally.
A non-finite loss raises `NonFiniteLossError` before anything from that step is saved.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from train import checkpoint as checkpoint_lib
from train import data, distributed, experiment, finetune, metrics as metrics_lib, objectives, partitioning
from train import state as state_lib
from train import step as step_lib


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; the message names the step and the last good checkpoint."""


class _StopFlag:
    """Set by SIGTERM: the loop saves after the step in flight and leaves."""

    def __init__(self):
        self.signal = None

    def __call__(self, signum, frame):
        self.signal = signum


def _seed_keys(config) -> tuple[jax.Array, jax.Array, jax.Array]:
    root = jax.random.key(config.seed, impl=config.rng_impl)
    # Separate streams for init, training (folded with the step inside the step) and evaluation.
    return jax.random.fold_in(root, 0), jax.random.fold_in(root, 1), jax.random.fold_in(root, 2)


def check_batch(batch: dict, vocab_size: int, split: str) -> dict:
    """Host-side (numpy) check of a batch before it reaches the device: a token id outside the model's vocabulary
    would be clamped by the embedding gather under jit and train on garbage without a word. Packed rows hold their
    ids in `inputs`, encoder/decoder batches (denoising) in `input_ids` and `decoder_input_ids`, fine-tuning batches
    in `input_ids` (`[batch, length]`, or `[batch, choices, length]`)."""
    for key in ("inputs", "input_ids", "decoder_input_ids"):
        if key not in batch:
            continue
        ids = np.asarray(batch[key])
        if ids.size and (ids.min() < 0 or ids.max() >= vocab_size):
            bad = np.argwhere((ids < 0) | (ids >= vocab_size))[0]
            where = f"row {int(bad[0])}, " + (f"choice {int(bad[1])}, " if ids.ndim == 3 else "") + \
                f"position {int(bad[-1])}"
            raise ValueError(f"data ({split}): token id {int(ids[tuple(bad)])} at {where} ({key}) is outside the "
                             f"model's vocabulary [0, model.vocab_size={vocab_size}); is config.data.tokenizer the "
                             "model's tokenizer?")
    return batch


_to_device = partitioning.put_batch


def _mean_rows(rows: list[dict]) -> dict:
    return {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}


def evaluate_lm(eval_step, params, eval_data, eval_start: dict, *, steps: int, batch_sharding, vocab_size: int,
                split: str, key) -> dict[str, float]:
    """The objective's metrics averaged over the first `steps` batches of the eval split (the same ones each time:
    `eval_data` is rewound to `eval_start`)."""
    eval_data.set_state(eval_start)
    rows = [jax.device_get(eval_step(params, _to_device(check_batch(next(eval_data), vocab_size, split),
                                                        batch_sharding), key))
            for _ in range(steps)]
    return _mean_rows([{k: float(v) for k, v in r.items()} for r in rows])


def tokens_per_char(source, processor) -> float:
    """Tokens (with the `</s>` after each document, as the pipeline packs them) per character of the documents:
    converts a loss in nats/token into bits/character, a measure that does not depend on the tokenizer."""
    eos = 1 if processor.eos_id() >= 0 else 0
    tokens = chars = 0
    for i in range(len(source)):
        text = source[i]
        tokens += len(processor.encode(text)) + eos
        chars += len(text) + 1  # the document separator the `</s>` stands for
    return tokens / max(chars, 1)


def unigram_entropy(source, processor) -> float:
    """Entropy (nats/token) of the corpus' token frequencies: the loss of the best context-free predictor."""
    counts = np.zeros(processor.get_piece_size(), np.int64)
    eos = [processor.eos_id()] if processor.eos_id() >= 0 else []
    for i in range(len(source)):
        np.add.at(counts, np.asarray(processor.encode(source[i]) + eos, np.int64), 1)
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())


def run(config, workdir: str, *, progress: bool | None = None) -> dict[str, Any]:
    """Trains `config` in `workdir` (resuming when it holds checkpoints) and returns a summary dict."""
    exp = experiment.resolve(config)
    model_dict, objective, tx, schedule, rules = exp.model, exp.objective, exp.tx, exp.schedule, exp.rules
    num_shards = config.data.shards or jax.process_count()
    if num_shards % jax.process_count() or config.batch_size % num_shards:
        raise ValueError(f"config.data.shards={config.data.shards}: the data shards ({num_shards}) must be a multiple "
                         f"of the {jax.process_count()} processes and divide config.batch_size={config.batch_size}")
    primary = distributed.is_primary()
    workdir = prepare_workdir(workdir)
    mesh = exp.make_mesh()
    module = exp.build_module(mesh)
    init_key, train_key, eval_key = _seed_keys(config)

    data_dir = config.data.data_dir or None
    # A retrieval objective (REALM) reads its own corpus: evidence blocks, sentences, questions; its index of block
    # embeddings is part of the train state (train/retrieval_index.py).
    retrieval = None
    task = evaluator = None
    eval_data = None
    if getattr(objective, "uses_index", False):
        from train.data.retrieval_corpus import ExampleBatches
        from train.retrieval_index import RetrievalSetup, examples

        with distributed.primary_first("retrieval corpus"):
            params_sharding = state_lib.state_shardings(module, tx, mesh, rules).params
            retrieval, module, objective = RetrievalSetup.create(config, objective, module, mesh, params_sharding)
        tokenizer = retrieval.corpus.path
        train_data = ExampleBatches(examples(objective, retrieval.corpus, "train"),
                                    global_batch_size=config.batch_size, seed=config.seed,
                                    process_index=jax.process_index(), process_count=jax.process_count())
        if config.eval_every:
            eval_data = ExampleBatches(examples(objective, retrieval.corpus, "validation"),
                                       global_batch_size=config.batch_size, seed=0, shuffle=False,
                                       process_index=jax.process_index(), process_count=jax.process_count())
            eval_start = eval_data.get_state()
    elif exp.task is not None:
        # Fine-tuning: the labelled files, read whole, tokenized and checked before anything is compiled.
        task = finetune.TaskData(exp)
        tokenizer = task.tokenizer_source
        train_data = task.train_batches(batch_size=config.batch_size, seed=config.seed)
    else:
        # Process 0 prepares the corpus files and trains the tokenizer; the others then find them in the cache.
        with distributed.primary_first("tokenizer"):
            tokenizer = config.data.tokenizer or data.build_tokenizer(
                config.data.source, vocab_size=config.data.vocab_size, cache_dir=config.data.cache_dir or None,
                data_dir=data_dir)
        # This process's rows of each global batch; the global batch depends on num_shards alone (not on how
        # many processes share the work), so a run reads the same data on one host or several.
        pipeline_options = objectives.data_options(exp.objective)  # denoising: encoder/decoder examples
        train_data = data.make_sharded_dataset(config.data.source, seq_len=config.seq_len,
                                               global_batch_size=config.batch_size, num_shards=num_shards,
                                               seed=config.seed, tokenizer=tokenizer, data_dir=data_dir,
                                               **pipeline_options)
        if config.eval_every:
            eval_data = data.make_sharded_dataset(config.data.source, split=config.data.eval_split,
                                                  seq_len=config.seq_len, global_batch_size=config.batch_size,
                                                  num_shards=num_shards, seed=0, tokenizer=tokenizer,
                                                  data_dir=data_dir, **pipeline_options)
            eval_start = eval_data.get_state()

    checkpoints = checkpoint_lib.Checkpoints(workdir, keep=config.keep_checkpoints,
                                             async_save=config.async_checkpointing)
    # Fine-tuning with evaluation: the best checkpoint by exp.best's metric, apart from the latest ones.
    best_checkpoints = None if exp.best is None else checkpoint_lib.Checkpoints(
        workdir, keep=1, async_save=config.async_checkpointing, name=checkpoint_lib.BEST)
    shardings = state_lib.state_shardings(module, tx, mesh, rules)
    abstract = state_lib.abstract_state(shardings, module, tx)
    if retrieval is not None:
        shardings, abstract = retrieval.shardings(shardings), retrieval.abstract_state(abstract)

    def check_run(metadata: dict) -> None:
        check_same_run(metadata, config, model_dict, workdir)
        if retrieval is not None and metadata.get("block_store") != retrieval.corpus.identity:
            raise ValueError(f"--workdir={workdir!r}: its checkpoints index the block store "
                             f"{metadata.get('block_store')!r}, not this config's {retrieval.corpus.identity!r} "
                             "(config.data differs); use a new workdir")

    # The newest readable checkpoint (unreadable ones are moved aside); one of another run is refused by name.
    restored = checkpoints.restore_latest(abstract, check=check_run)
    latest = None if restored is None else restored[0]
    refresh_seconds = None
    if restored is None:
        state, _ = state_lib.init_train_state(module, tx, init_key, mesh, rules, init_from=config.init_from or None)
        if retrieval is not None:
            state, refresh_seconds = retrieval.attach_index(state, 0)
    else:
        _, state, data_state, _ = restored
        train_data.set_state(data_state)
    start = int(state.step)
    if primary:
        with open(os.path.join(workdir, "config.json"), "w") as f:
            json.dump({"config": experiment.to_dict(config), "model": model_dict}, f, indent=2)

    vocab_size = module.config.vocab_size
    if task is None:
        batch_sharding = partitioning.batch_sharding(mesh, rules)
    else:  # one sharding per array: labels are [batch] (or [batch, length]), multiple choice [batch, choices, length]
        batch_sharding = task.shardings(mesh, rules, {k: v[None] for k, v in task.train.features[0].items()})
        if config.eval_every:
            evaluator = finetune.TaskEvaluator(task, module, objective, mesh, rules, shardings.params, eval_key,
                                               batch_size=config.batch_size,
                                               check=lambda b: check_batch(b, vocab_size, "eval"))
    if retrieval is not None:  # rows of every rank (source blocks [b], answers [b, A, La]) split by the batch alone
        batch_sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(batch_sharding.spec[0]))
    train_step = step_lib.make_train_step(module, objective, tx, schedule, shardings, batch_sharding,
                                          grad_accum_steps=config.grad_accum_steps,
                                          context_sharding=None if retrieval is None else retrieval.context_sharding)
    eval_step = None
    if retrieval is not None:
        retrieval_step = train_step
        train_step = lambda state, batch, key: retrieval_step(state, batch, key, retrieval.context)  # noqa: E731
        indexed_eval = step_lib.make_eval_step(module, objective, shardings.params, batch_sharding,
                                               {"index": shardings.index, **retrieval.context_sharding})
        eval_step = lambda params, batch, key: indexed_eval(  # noqa: E731
            params, batch, key, {"index": state.index, **retrieval.context})
    elif task is None:
        eval_step = step_lib.make_eval_step(module, objective, shardings.params, batch_sharding)

    # Every process computes the metrics (they are global values); process 0 alone writes and shows them.
    writer = metrics_lib.MetricsWriter(workdir, resume_step=start) if primary else metrics_lib.NullWriter()
    bar = metrics_lib.Progress(config.total_steps, start, disable=None if progress is None else not progress,
                               silent=not primary)
    if latest is not None:
        bar.write(f"resuming from {checkpoints.directory}/{latest}")
    for note in task.notes if task is not None else ():
        bar.write(f"note: {note}")
    best = _best_so_far(best_checkpoints, start)
    stop = _StopFlag()
    previous_handler = signal.signal(signal.SIGTERM, stop) if _main_thread() else None
    tokens_per_step = config.batch_size * config.seq_len
    last_good = latest
    summary: dict[str, Any] = {"workdir": workdir, "start_step": start}
    pending: list[tuple[int, dict]] = []
    window_start, window_tokens = time.perf_counter(), 0
    last_row: dict = {}
    last_eval: dict = {}

    def metadata(step: int) -> dict:
        meta = {"step": step, "config": experiment.to_dict(config), "model": model_dict, "tokenizer": tokenizer,
                "time": time.time(), "jax_version": jax.__version__,
                **({"tokens_seen": step * tokens_per_step} if task is None else {}),
                **({"best": best} if best else {})}
        if retrieval is not None:
            meta.update(block_store=retrieval.corpus.identity, index_step=int(state.index_step))
        return meta

    def data_state() -> dict:
        if task is not None:  # every process draws the same global batches: one state serves all
            return train_data.get_state()
        # Each process knows only its own shards' positions: gather them all into the checkpoint, so it
        # restores under any process count that divides config.data.shards.
        return distributed.merge_data_states(distributed.allgather_json(train_data.get_state()))

    def save(step: int) -> None:
        nonlocal last_good
        checkpoints.save(step, state, data_state(), metadata(step))
        last_good = step

    def keep_if_best(row: dict) -> None:
        """Saves the state to DIR/best/ when the eval metric of `row` beats the best so far."""
        nonlocal best
        metric, mode = exp.best
        value = row.get(f"eval_{metric}")
        if value is None or (best and not (value > best["value"] if mode == "max" else value < best["value"])):
            return
        best = {"metric": metric, "mode": mode, "value": value, "step": row["step"],
                "checkpoint": os.path.join(best_checkpoints.directory, str(row["step"]))}
        best_checkpoints.save(row["step"], state, data_state(), metadata(row["step"]))

    def flush(step: int) -> None:
        """Fetches pending metrics, stops on a non-finite loss, writes the row of `step` if it is a log step."""
        nonlocal window_start, window_tokens, last_row, refresh_seconds
        fetched = jax.device_get([m for _, m in pending])
        for (s, _), m in zip(pending, fetched):
            if not math.isfinite(float(m["loss"])):
                where = (f"the last good checkpoint is {checkpoints.directory}/{last_good}; rerunning resumes there"
                         if last_good is not None else "no checkpoint was saved yet")
                raise NonFiniteLossError(
                    f"loss is {float(m['loss'])} at step {s}: training stopped ({where}). Lower "
                    f"config.learning_rate (now {config.learning_rate}), raise config.warmup_steps, or check "
                    f"config.grad_clip_norm / config.dtype.")
        if pending and (step % config.log_every == 0 or step == config.total_steps):
            now = time.perf_counter()
            tps = window_tokens / max(now - window_start, 1e-9)
            window_start, window_tokens = now, 0
            row = {"step": step, **{k: float(v) for k, v in fetched[-1].items()}, "tokens_per_second": tps}
            if refresh_seconds is not None:  # the last index refresh (re-embedding every block)
                row["index_refresh_seconds"] = refresh_seconds
                row["index_step"] = int(state.index_step)
            writer.write(row)
            last_row = row
            bar.update(0, loss=row["loss"], tokens_per_second=tps)
        pending.clear()

    # Causal LMs: the eval loss in bits per character too (independent of the tokenizer's vocabulary).
    eval_tokens_per_char = None
    if config.eval_every and config.objective.name == "causal_lm":
        eval_tokens_per_char = tokens_per_char(
            data.open_source(config.data.source, split=config.data.eval_split, data_dir=data_dir),
            data.load_tokenizer(tokenizer))

    def evaluate(step: int) -> dict:
        if task is not None:
            metrics = evaluator(state.params)
            row = {"step": step, "split": "eval", **{f"eval_{k}": v for k, v in metrics.items()}}
            writer.write(row)
            headline = exp.best[0] if exp.best else None
            bar.write(f"step {step}: " + ", ".join(f"{k} {_fmt(v)}" for k, v in metrics.items()
                                                   if k == "loss" or k == headline or len(metrics) <= 4))
            if best_checkpoints is not None:
                keep_if_best(row)
            return row
        metrics = evaluate_lm(eval_step, state.params, eval_data, eval_start, steps=config.eval_steps,
                              batch_sharding=batch_sharding, vocab_size=vocab_size, split=config.data.eval_split,
                              key=eval_key)
        row = {"step": step, "split": config.data.eval_split, **{f"eval_{k}": v for k, v in metrics.items()}}
        if eval_tokens_per_char is not None:
            row["eval_bits_per_char"] = row["eval_loss"] / math.log(2) * eval_tokens_per_char
        writer.write(row)
        bar.write(f"step {step}: eval loss {row['eval_loss']:.4f}"
                  + (f" ({row['eval_bits_per_char']:.3f} bits/char)" if "eval_bits_per_char" in row else ""))
        return row

    started = time.perf_counter()
    scope = contextlib.ExitStack()
    try:
        # jit traces at the first call: the mesh and rules must be in scope then, for the logical constraints.
        scope.enter_context(partitioning.activate(mesh, rules))
        step = start
        if config.eval_at_start and config.eval_every and start == 0:
            last_eval = evaluate(0)  # the starting point: what the first steps improve on
        while step < config.total_steps:
            host_batch = check_batch(next(train_data), vocab_size, "train")
            # Fine-tuning counts real tokens (not padding), as the LM's packed rows have none.
            window_tokens += tokens_per_step if task is None else \
                int(np.asarray(host_batch["attention_mask"]).sum()) * jax.process_count()
            batch = _to_device(host_batch, batch_sharding)
            state, step_metrics = train_step(state, batch, train_key)
            step += 1
            pending.append((step, step_metrics))
            bar.update(1)
            if retrieval is not None and objective.refresh_every and step % objective.refresh_every == 0 \
                    and step < config.total_steps:
                # Before any save of this step: its checkpoint holds the refreshed index.
                state, refresh_seconds = retrieval.refresh(state, step)
            checkpoint_due = step % config.checkpoint_every == 0 or step == config.total_steps
            eval_due = config.eval_every and (step % config.eval_every == 0 or step == config.total_steps)
            if (step % config.log_every == 0 or checkpoint_due or eval_due or stop.signal
                    or step == config.total_steps):
                flush(step)
            if eval_due:
                last_eval = evaluate(step)
            if checkpoint_due or stop.signal:
                save(step)
            if stop.signal:
                checkpoints.wait()
                bar.write(f"signal {stop.signal}: saved {checkpoints.directory}/{step}; rerun the command to resume")
                summary.update(stopped_by_signal=int(stop.signal), final_step=step)
                return summary
        checkpoints.wait()
    finally:
        scope.close()
        bar.close()
        # Saves already started are of good states (the loss was checked first): let them finish.
        checkpoints.close()
        if best_checkpoints is not None:
            best_checkpoints.close()
        writer.close()
        if previous_handler is not None:
            signal.signal(signal.SIGTERM, previous_handler)

    if not last_row:  # nothing trained now (the run was already complete): report the recorded end
        rows = metrics_lib.read_rows(workdir)
        last_row = next((r for r in reversed(rows) if "split" not in r), {})
        last_eval = next((r for r in reversed(rows) if "split" in r), {})
    summary.update(final_step=int(state.step), seconds=time.perf_counter() - started, last_train=last_row,
                   last_eval=last_eval, checkpoint=os.path.join(checkpoints.directory, str(int(state.step))))
    if best:
        summary["best"] = best
    reference = None
    if config.objective.name == "causal_lm":
        processor = data.load_tokenizer(tokenizer)
        summary["unigram_entropy"] = unigram_entropy(data.open_source(config.data.source, data_dir=data_dir),
                                                     processor)
        reference = (summary["unigram_entropy"], "unigram entropy of the corpus")
        if config.sample_prompt and config.sample_tokens:
            if jax.process_count() == 1:
                summary["sample"] = generate_sample(module, state.params, processor, config)
            else:
                summary["sample"] = ("(no sample in a multi-process run: generate from the saved checkpoint "
                                     "in one process)")
    if primary:
        summary["loss_png"] = metrics_lib.plot_loss_curve(
            workdir, title=f"{type(module).__name__} ({config.objective.name})", reference=reference)
    return summary


def _fmt(value) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def _best_so_far(best_checkpoints, start: int) -> dict | None:
    """The best eval result a resumed run had reached (stored with its best checkpoint), or None."""
    if best_checkpoints is None:
        return None
    steps = [s for s in best_checkpoints.all_steps() if s <= start]
    if not steps:
        return None
    try:
        return best_checkpoints.read_metadata(max(steps)).get("best")
    except Exception:  # noqa: BLE001 - an unreadable best checkpoint is beaten by the next evaluation
        return None


def prepare_workdir(workdir: str) -> str:
    """The absolute workdir, created if needed and checked writable; a path that cannot be a workdir (a file, a
    directory without write permission) is a ``ValueError`` naming it."""
    path = os.path.abspath(os.path.expanduser(workdir))
    if os.path.exists(path) and not os.path.isdir(path):
        raise ValueError(f"--workdir={workdir!r}: {path} is a file, not a directory")
    try:
        os.makedirs(path, exist_ok=True)
        probe = os.path.join(path, f".write-test-{os.getpid()}")
        with open(probe, "w"):
            pass
        os.remove(probe)
    except OSError as error:
        raise ValueError(f"--workdir={workdir!r}: cannot write there ({error.strerror or error})") from None
    return path


# What makes a checkpoint of another run: its params (the model) and its optimizer state (the optimizer).
# The learning-rate factors add a stage to the optimizer state, so they are part of it too.
_RUN_IDENTITY = ("optimizer", "head_learning_rate_factor", "layer_decay")


def check_same_run(metadata: dict, config, model_dict: dict, workdir: str) -> None:
    """Raises ``ValueError`` naming the fields that differ when ``workdir``'s checkpoint is of another model (other
    param shapes) or optimizer than ``config``: resuming it would fail deep in the restore. Fields that leave
    the params' shapes alone (a dropout rate) may change between runs."""
    import jaxmodels

    stored_model = metadata.get("model") or {}
    stored_config = metadata.get("config") or {}
    differences = [f"{k}: {stored_config.get(k)!r} in the checkpoint, {config[k]!r} now"
                   for k in _RUN_IDENTITY if k in stored_config and stored_config.get(k) != config[k]]
    model_fields = [f"model.{k}: {stored_model.get(k)!r} in the checkpoint, {model_dict.get(k)!r} now"
                    for k in sorted(set(stored_model) | set(model_dict)) if stored_model.get(k) != model_dict.get(k)]
    if model_fields:
        def shapes(model):
            try:
                return jax.tree.map(lambda x: x.shape, jaxmodels.abstract_params(jaxmodels.from_config(model)))
            except Exception:  # noqa: BLE001 - a stored model this checkout cannot build differs by definition
                return None
        if shapes(stored_model) != shapes(model_dict):
            differences = model_fields + differences
    if differences:
        raise ValueError(f"--workdir={workdir!r} holds checkpoints of another run ({'; '.join(differences[:6])}"
                         f"{'; ...' if len(differences) > 6 else ''}). Use a new --workdir, or make the config match "
                         f"the stored one ({workdir}/config.json)")


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def generate_sample(module, params, processor, config) -> str:
    """Continues `config.sample_prompt` with `jaxmodels.generation.generate` (top-k sampling, fixed seed).

    A failure here never fails the run (the checkpoint is already saved); the message says why instead.
    """
    try:
        from jaxmodels import generation
    except ImportError:
        return "(no sample: jaxmodels.generation is not available in this checkout)"
    import jaxmodels

    prompt = processor.encode(config.sample_prompt)
    ids = jnp.asarray([prompt], jnp.int32)
    key = jax.random.key(config.seed)
    family = jaxmodels.family(type(module.config).model_type)
    # Arrays the family's decoder needs on every call (Reformer: one set of LSH rotations for the whole sample).
    kwargs = family.generation_kwargs(module.config, len(prompt) + config.sample_tokens, jax.random.fold_in(key, 1))
    try:
        out = generation.generate(module, params, ids, max_new_tokens=config.sample_tokens, do_sample=True,
                                  temperature=0.8, top_k=40, rng=jax.random.fold_in(key, 0), **kwargs)
    except Exception as error:  # noqa: BLE001 - a demo sample must not turn a finished run into a failure
        return f"(no sample: generation failed: {type(error).__name__}: {error})"
    return processor.decode([int(t) for t in np.asarray(out)[0]])
