"""`python -m train --config configs/<name>.py --workdir DIR [--config.<key>=<value> ...]`

Several processes (one per host): add `--coordinator_address HOST:PORT --num_processes N --process_id I`
to each one's command (on a Cloud TPU VM, under Slurm or Open MPI, leave them out: the cluster is detected).
Every process runs the same command with the same workdir (a shared filesystem for checkpoints).

With no arguments it runs `configs/quickstart.py` into `./runs/quickstart`. Rerunning a command resumes from
the latest complete checkpoint in its workdir (an unreadable newest checkpoint is moved aside to
`DIR/unreadable_checkpoints/` and the previous one is used).

Exit status:
  0  done, or stopped by SIGTERM after saving a checkpoint
  1  the loss became non-finite (the last good checkpoint is kept); also any internal error (with a traceback)
  2  a user error: flags, config file or keys, workdir, checkpoint of another run, data. One `error: ...` line
     on stderr and no traceback (add --debug to see it).
"""

from __future__ import annotations

import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_CONFIGS = os.path.join(_ROOT, "configs")  # the checkout's experiment configs (data, loaded by path)
_CONFIG = config_flags.DEFINE_config_file(
    "config", os.path.join(_CONFIGS, "quickstart.py"), "Experiment config file (a get_config() module).",
    lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (default: ./runs/<config file name>).")
_PROGRESS = flags.DEFINE_bool("progress", None, "Show the progress bar (default: when stderr is a terminal).")
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", None, "Multi-process run: HOST:PORT of process 0's coordinator (give with "
    "--num_processes and --process_id; omit all three on a Cloud TPU VM / Slurm / Open MPI to auto-detect).")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Multi-process run: how many processes.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "Multi-process run: this process's index, 0 .. N-1.")
_DEBUG = flags.DEFINE_bool("debug", False, "On a user error (exit status 2), show the Python traceback too.")
_HOST_MEMORY = flags.DEFINE_enum(
    "host_memory", "release", ["release", "retain"], "release: the C library's defaults; retain: keep freed host "
    "memory in the process (one malloc arena, no trimming), so a CPU step with a large XLA scratch reuses its "
    "already-mapped pages instead of page-faulting them in every step (train/host_memory.py: a gain for large "
    "models, a loss for small ones with a busy input pipeline).")


def _config_path(argv: list[str]) -> str:
    """The `--config` file of `argv` (the last one given, as absl takes it), or the quickstart's."""
    path = os.path.join(_CONFIGS, "quickstart.py")
    for i, arg in enumerate(argv):
        if arg.startswith("--config="):
            path = arg.split("=", 1)[1]
        elif arg == "--config" and i + 1 < len(argv):
            path = argv[i + 1]
    return path


def check_override_keys(argv: list[str]) -> str | None:
    """An error message for the first `--config.<key>=` naming no key of the config file, else None.

    ml_collections would fail on it too, but with a traceback from inside flag parsing; this names the key.
    """
    overrides = [a[len("--config."):].split("=", 1)[0] for a in argv if a.startswith("--config.")]
    if not overrides:
        return None
    from train.experiment import load_config

    try:
        config = load_config(_config_path(argv))
    except ValueError as error:
        return str(error)
    except Exception as error:  # noqa: BLE001 - the config file itself is broken: the user's to fix
        return f"--config={_config_path(argv)!r}: {type(error).__name__}: {error}"
    for dotted in overrides:
        node, walked = config, []
        for part in dotted.split("."):
            walked.append(part)
            if not hasattr(node, "keys") or part not in node.keys():
                where = "config." + ".".join(walked[:-1]) if walked[:-1] else "the config"
                if walked[:-1] and not hasattr(node, "keys"):
                    return (f"config.{'.'.join(walked)}: unknown key ({where} is {node!r}, not a dict"
                            f"{'; a preset name' if isinstance(node, str) else ''})")
                known = ", ".join(sorted(node.keys()))
                return f"config.{'.'.join(walked)}: unknown key ({where} has: {known})"
            node = node[part]
    return None


def main(argv):
    if len(argv) > 1:
        print(f"error: unexpected arguments: {argv[1:]} (flags are --name=value)", file=sys.stderr)
        return 2
    # Orbax reports every file it writes at INFO; the progress bar and metrics.jsonl are the run's log.
    logging.set_verbosity(logging.WARNING)
    # Imported here so `--help` and flag errors are fast.
    from train import distributed, host_memory, loop

    # Before anything starts jax's backends: their thread pools take their malloc arenas when they are created.
    host_memory.configure(_HOST_MEMORY.value)

    try:
        distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
        config = _CONFIG.value
        name = os.path.splitext(os.path.basename(_config_path(sys.argv)))[0]
        workdir = _WORKDIR.value or os.path.join("runs", name)
        summary = loop.run(config, workdir, progress=_PROGRESS.value)
    except ValueError as error:
        return _fail(error, 2)
    except loop.NonFiniteLossError as error:
        return _fail(error, 1, traceback=False)
    import jax

    if jax.process_index() == 0:
        print(format_summary(summary))
    return 0


def _fail(error: BaseException, status: int, traceback: bool | None = None) -> int:
    """Prints ``error: <message>`` (and, with --debug, the traceback) and returns the exit status."""
    show = _DEBUG.value if traceback is None else traceback
    if show:
        import traceback as tb

        tb.print_exception(error)
    print(f"error: {error}", file=sys.stderr)
    return status


def parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing with this command's contract: a bad flag, a config file that is missing or fails to
    load, or a `--config.<key>` it does not have is one `error: ...` line and exit status 2 (absl would print
    the usage and exit 1; a config file's own exception would be a traceback)."""
    debug = "--debug" in argv
    message = check_override_keys(argv[1:])
    if message is None:
        path = _config_path(argv)
        if not os.path.isfile(path):
            message = f"--config={path!r}: no such config file"
    if message is None:
        try:
            return flags.FLAGS(argv)
        except flags.Error as error:
            message = str(error)
        except Exception as error:  # noqa: BLE001 - the config file's get_config() raised: the user's file
            if debug:
                import traceback

                traceback.print_exception(error)
            message = f"--config={_config_path(argv)!r}: {type(error).__name__}: {error}"
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def format_summary(summary: dict) -> str:
    """The lines printed at the end of a run."""
    lines = []
    if "stopped_by_signal" in summary:
        return f"stopped by signal {summary['stopped_by_signal']} at step {summary['final_step']}; checkpoint saved"
    train, evals = summary.get("last_train") or {}, summary.get("last_eval") or {}
    lines.append(f"done: step {summary['final_step']} in {summary['seconds']:.0f}s"
                 + (f", train loss {train['loss']:.3f}" if "loss" in train else "")
                 + (f", eval loss {evals['eval_loss']:.3f}" if "eval_loss" in evals else "")
                 + (f" ({evals['eval_bits_per_char']:.3f} bits/char)" if "eval_bits_per_char" in evals else "")
                 + (f", {train['tokens_per_second']:,.0f} tokens/s" if "tokens_per_second" in train else ""))
    best = summary.get("best")
    if best:
        lines.append(f"best: eval {best['metric']} {best['value']:.4f} at step {best['step']} ({best['checkpoint']})")
    if "unigram_entropy" in summary:
        lines.append(f"unigram entropy of the corpus: {summary['unigram_entropy']:.3f} nats/token "
                     "(the loss of a model that ignores context)")
    if summary.get("sample"):
        lines.append(f"sample: {summary['sample']}")
    lines.append(f"outputs: {summary['workdir']}/  (metrics.jsonl, tensorboard/, checkpoints/, "
                 f"{'best/, ' if best else ''}loss.png)")
    return "\n".join(lines)


if __name__ == "__main__":
    from train.platform import skip_absent_tpu

    skip_absent_tpu()  # before anything imports jax
    app.run(main, flags_parser=parse_flags)
