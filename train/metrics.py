"""What a run reports: `DIR/metrics.jsonl`, TensorBoard events under `DIR/tensorboard`, a progress bar, and
`DIR/loss.png` at the end.

Each metrics.jsonl line is one JSON object: train rows `{"step", "loss", "learning_rate",
"tokens_per_second", ...objective metrics}` and eval rows `{"step", "split": "validation", "eval_loss", ...}`.
A resumed run first drops the rows after the step it resumes from, so the file of an interrupted-and-resumed
run reads like the file of an uninterrupted one.
"""

from __future__ import annotations

import json
import math
import os
import sys
from typing import Any, Mapping

import tqdm

METRICS_FILE = "metrics.jsonl"
LOSS_PNG = "loss.png"
TENSORBOARD_DIR = "tensorboard"


def read_rows(workdir: str) -> list[dict]:
    path = os.path.join(workdir, METRICS_FILE)
    if not os.path.exists(path):
        return []
    rows = []
    with open(path) as f:
        for line in f:
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:  # a line cut short by a kill
                pass
    return rows


class MetricsWriter:
    """Appends rows to metrics.jsonl (flushed per row) and mirrors scalars to TensorBoard."""

    def __init__(self, workdir: str, *, resume_step: int = 0):
        os.makedirs(workdir, exist_ok=True)
        self.path = os.path.join(workdir, METRICS_FILE)
        kept = [r for r in read_rows(workdir) if r.get("step", 0) <= resume_step]
        with open(self.path + ".tmp", "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in kept)
        os.replace(self.path + ".tmp", self.path)
        self._file = open(self.path, "a")
        self._tb = None
        try:
            from tensorboardX import SummaryWriter
        except ImportError:  # TensorBoard is optional; metrics.jsonl is the record.
            SummaryWriter = None
        if SummaryWriter is not None:
            self._tb = SummaryWriter(os.path.join(workdir, TENSORBOARD_DIR), flush_secs=10)

    def write(self, row: Mapping[str, Any]) -> None:
        row = {k: _plain(v) for k, v in row.items()}
        self._file.write(json.dumps(row) + "\n")
        self._file.flush()
        if self._tb is not None:
            prefix = "eval/" if row.get("split") else "train/"
            for key, value in row.items():
                if key not in ("step", "split") and isinstance(value, (int, float)) and math.isfinite(value):
                    self._tb.add_scalar(prefix + key, value, row["step"])

    def close(self) -> None:
        self._file.close()
        if self._tb is not None:
            self._tb.close()


class NullWriter:
    """What processes other than 0 write metrics to: nothing (process 0 writes the run's one record)."""

    def write(self, row: Mapping[str, Any]) -> None:
        pass

    def close(self) -> None:
        pass


def _plain(value: Any) -> Any:
    if hasattr(value, "item"):
        value = value.item()
    return value


class Progress:
    """A tqdm bar over optimizer steps showing loss and tokens/s (to stderr, so stdout stays for results)."""

    def __init__(self, total: int, initial: int, *, disable: bool | None = None, silent: bool = False):
        """`disable`: no bar (None: when stderr is not a terminal); `silent`: no bar and no messages either
        (processes other than 0 of a multi-process run)."""
        self._silent = silent
        disable = True if silent else disable
        self._bar = tqdm.tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True, file=sys.stderr,
                              disable=disable, mininterval=1.0)

    def update(self, steps: int, *, loss: float | None = None, tokens_per_second: float | None = None) -> None:
        if loss is not None:
            self._bar.set_postfix(loss=f"{loss:.4f}", tok_s=f"{tokens_per_second or 0:,.0f}", refresh=False)
        self._bar.update(steps)

    def write(self, message: str) -> None:
        if not self._silent:
            self._bar.write(message, file=sys.stderr)

    def close(self) -> None:
        self._bar.close()


def plot_loss_curve(workdir: str, title: str = "", reference: tuple[float, str] | None = None) -> str | None:
    """Writes `DIR/loss.png` (train loss, eval loss when present) from metrics.jsonl; returns its path.

    `reference` is an optional `(loss, label)` drawn as a horizontal line, e.g. the unigram entropy.
    """
    try:
        # A Figure on its own Agg canvas: no pyplot, so the process's backend (a notebook's inline plots) is
        # left as it was.
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        return None

    rows = read_rows(workdir)
    train = [(r["step"], r["loss"]) for r in rows if "split" not in r and "loss" in r]
    evals = [(r["step"], r["eval_loss"]) for r in rows if r.get("split") and "eval_loss" in r]
    if not train and not evals:
        return None
    fig = Figure(figsize=(7, 4), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    if train:
        ax.plot(*zip(*train), label="train loss")
    if evals:
        ax.plot(*zip(*evals), "o-", label="eval loss")
    if reference is not None:
        ax.axhline(reference[0], color="gray", linestyle="--", label=reference[1])
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats/token)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    path = os.path.join(workdir, LOSS_PNG)
    fig.tight_layout()
    fig.savefig(path)
    return path
