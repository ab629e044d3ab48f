"""`python -m train.evaluate --workdir DIR [--step N | --step best] [--eval_file PATH]`

Re-evaluates a checkpoint of a run from the run's own stored config (`DIR/config.json`) and tokenizer (kept in
the checkpoint's metadata): the latest checkpoint by default, `--step N` one in `DIR/checkpoints/` (or the best
one, `DIR/best/`), `--step best` the best one. A fine-tuning run is scored on its whole eval file (or on
`--eval_file`, another file of the same format) with its task's metrics (`train.task_metrics`); a language-model
run gets its eval loss over `config.eval_steps` batches of its eval split.

Prints one JSON object (`{"step", "checkpoint", "eval_file"?, "metrics": {...}}`) and writes it to
`DIR/evaluations/<step>.json`.

Exit status: 0 done; 2 a user error (no such workdir, no stored config, no checkpoint of that step, a bad eval
file), as one `error: ...` line on stderr (add --debug for the traceback); 1 anything else (a traceback).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one `error:` line and exit status 2, as `python -m train`
        print(f"error: {message}", file=sys.stderr)
        sys.exit(2)


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m train.evaluate", description=__doc__.split("\n\n")[1])
    parser.add_argument("--workdir", required=True, help="the run's directory (what --workdir was in training)")
    parser.add_argument("--step", default=None, help="a checkpoint step, or 'best' (default: the latest)")
    parser.add_argument("--eval_file", default=None, help="fine-tuning: evaluate on this file instead of the run's")
    parser.add_argument("--debug", action="store_true", help="show the traceback of a user error too")
    return parser


def stored_config(workdir: str):
    """The run's config (ml_collections) and model dict from `DIR/config.json`."""
    import ml_collections

    path = os.path.join(workdir, "config.json")
    if not os.path.isdir(workdir):
        raise ValueError(f"--workdir={workdir!r}: no such directory")
    if not os.path.isfile(path):
        raise ValueError(f"--workdir={workdir!r}: holds no config.json (not the directory of a training run)")
    try:
        with open(path) as f:
            stored = json.load(f)
        return ml_collections.ConfigDict(stored["config"]), stored["model"]
    except (json.JSONDecodeError, KeyError, TypeError) as error:
        raise ValueError(f"{path}: not a run's config ({type(error).__name__}: {error})") from None


def evaluate(workdir: str, step: str | int | None = None, eval_file: str | None = None) -> dict[str, Any]:
    """Evaluates checkpoint `step` (None: the latest; "best": the best) of the run in `workdir`; see the module
    docstring. Raises ValueError naming the flag or file on a user error."""
    import jax

    from train import checkpoint as checkpoint_lib
    from train import data, experiment, finetune, loop, partitioning
    from train import state as state_lib

    workdir = os.path.abspath(workdir)
    config, model = stored_config(workdir)
    latest = checkpoint_lib.Checkpoints(workdir, async_save=False)
    best = checkpoint_lib.Checkpoints(workdir, async_save=False, name=checkpoint_lib.BEST)
    # Closed on every path: an open manager's threads outlive a user error and print their noise at exit.
    try:
        steps = {"checkpoints": latest.all_steps(), "best": best.all_steps()}
        if step == "best":
            if not steps["best"]:
                raise ValueError(f"--step=best: {workdir} holds no best checkpoint (fine-tuning runs with evaluation "
                                 "keep one)")
            manager, step = best, max(steps["best"])
        elif step is None:
            if not steps["checkpoints"]:
                raise ValueError(f"--workdir={workdir!r}: holds no checkpoint yet")
            manager, step = latest, max(steps["checkpoints"])
        else:
            try:
                step = int(step)
            except ValueError:
                raise ValueError(f"--step={step!r}: expected a step number or 'best'") from None
            if step in steps["checkpoints"]:
                manager = latest
            elif step in steps["best"]:
                manager = best
            else:
                raise ValueError(f"--step={step}: no such checkpoint in {workdir} (steps: {steps['checkpoints']}; "
                                 f"best: {steps['best']})")
        metadata = manager.read_metadata(step)
        tokenizer = metadata.get("tokenizer") or ""
        with config.unlocked(), config.ignore_type():
            # The resolved model and the tokenizer the run trained with, so nothing is re-derived from paths that
            # may have changed since (init_from's directory is not needed: the weights are the checkpoint's).
            config.model = model
            config.init_from = ""
            config.data.tokenizer = tokenizer
            if eval_file is not None:
                config.data.eval_file = eval_file
            config.eval_every = config.eval_every or 1  # evaluation is the point here
        try:
            exp = experiment.resolve(config)
        except ValueError as error:
            if str(error).startswith("config.data.eval_file=''"):
                raise ValueError("--eval_file: the run has no eval file (config.data.eval_file); name one") from None
            raise
        if exp.task is None and eval_file is not None:
            raise ValueError("--eval_file: only for fine-tuning runs (a language-model run reads config.data.source)")
        mesh = exp.make_mesh()
        module = exp.build_module(mesh)
        shardings = state_lib.state_shardings(module, exp.tx, mesh, exp.rules)
        state, _, _ = manager.restore(step, state_lib.abstract_state(shardings, module, exp.tx))
        _, _, eval_key = loop._seed_keys(config)
        vocab_size = module.config.vocab_size
        with partitioning.activate(mesh, exp.rules):
            if exp.task is not None:
                task = finetune.TaskData(exp, tokenizer_source=tokenizer)
                evaluator = finetune.TaskEvaluator(task, module, exp.objective, mesh, exp.rules, shardings.params,
                                                   eval_key, batch_size=config.batch_size,
                                                   check=lambda b: loop.check_batch(b, vocab_size, "eval"))
                metrics = evaluator(state.params)
            else:
                from train import step as step_lib

                batch_sharding = partitioning.batch_sharding(mesh, exp.rules)
                eval_step = step_lib.make_eval_step(module, exp.objective, shardings.params, batch_sharding)
                eval_data = data.make_sharded_dataset(
                    config.data.source, split=config.data.eval_split, seq_len=config.seq_len,
                    global_batch_size=config.batch_size, num_shards=config.data.shards or jax.process_count(), seed=0,
                    tokenizer=tokenizer, data_dir=config.data.data_dir or None)
                metrics = loop.evaluate_lm(eval_step, state.params, eval_data, eval_data.get_state(),
                                           steps=config.eval_steps, batch_sharding=batch_sharding,
                                           vocab_size=vocab_size, split=config.data.eval_split, key=eval_key)
        result = {"step": int(step), "checkpoint": os.path.join(manager.directory, str(step)),
                  **({"eval_file": config.data.eval_file} if exp.task is not None else {}), "metrics": metrics}
        if jax.process_index() == 0:
            os.makedirs(os.path.join(workdir, "evaluations"), exist_ok=True)
            with open(os.path.join(workdir, "evaluations", f"{step}.json"), "w") as f:
                json.dump(result, f, indent=2)
        return result
    finally:
        latest.close()
        best.close()


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        result = evaluate(args.workdir, args.step, args.eval_file)
    except ValueError as error:
        if args.debug:
            import traceback

            traceback.print_exception(error)
        print(f"error: {error}", file=sys.stderr)
        return 2
    import jax

    if jax.process_index() == 0:
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    from train.platform import skip_absent_tpu

    skip_absent_tpu()  # before anything imports jax
    from absl import logging

    logging.set_verbosity(logging.WARNING)  # Orbax reports every file it reads at INFO
    sys.exit(main())
