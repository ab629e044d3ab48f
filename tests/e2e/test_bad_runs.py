"""The bad-input catalogue, run as a user runs it: `python -m train` and `python -m train.aot` with wrong flags,
config files, workdirs, and faults (a corrupt newest checkpoint, a workdir of another run, a failing disk).

The contract (train/__main__.py): exit 0 done, 1 non-finite loss, 2 any user error with one `error: ...` line
naming the flag / key / file and no traceback (unless --debug); a corrupt newest checkpoint is moved aside and
the run resumes from the previous one. (SIGKILL during a save and SIGTERM: tests/e2e/test_resume.py.)
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys

import pytest

from tests.e2e.conftest import ROOT, TINY, complete_checkpoints, train_losses
from tests.fast_compile import unoptimised

FAST = ("--config.total_steps=2", "--config.checkpoint_every=1", "--config.eval_every=0", "--config.log_every=1")


def _user_error(result, message: str) -> None:
    """Exit status 2, the message on stderr, and no Python traceback or thread noise."""
    assert result.returncode == 2, (result.returncode, result.stderr[-2000:])
    assert message in result.stderr, result.stderr[-2000:]
    assert "Traceback" not in result.stderr and "Event loop is closed" not in result.stderr, result.stderr[-3000:]


def _write(path, text: str) -> str:
    with open(path, "w") as f:
        f.write(text)
    return str(path)


@pytest.mark.parametrize("args,message", [
    (("--config=/no/such/config.py",), "error: --config='/no/such/config.py': no such config file"),
    (("--config.batch_size=abc",), "error: flag --config.batch_size=abc"),
    (("--config.learning_rte=0.1",), "config.learning_rte: unknown key"),
    (("--config.model.hiden_size=8",), "config.model.hiden_size: unknown key (config.model is 'albert-tiny'"),
    (("--progress=maybe",), "error: flag --progress=maybe"),
    (("--nosuchflag=1",), "error: Unknown command line flag 'nosuchflag'"),
    (("stray",), "error: unexpected arguments: ['stray']"),
    (("--config.optimizer=adam",), "config.optimizer='adam'"),
    (("--config.seq_len=4096",), "config.seq_len=4096: exceeds model.max_position_embeddings=128"),
    (("--config.mesh=data=3",), "config.mesh='data=3': needs 3 devices, there are 1"),
    (("--config.axis_rules=fast",), "config.axis_rules='fast': unknown rule set"),
    (("--num_processes=2",), "error:"),
])
def test_flags_and_config_errors(cli, tmp_path, args, message):
    result = cli(tmp_path / "w", *args)
    _user_error(result, message)
    assert not os.path.exists(tmp_path / "w" / "checkpoints")


@pytest.mark.parametrize("body,message", [
    ("def get_config(:\n", "SyntaxError"),
    ("def get_config():\n    raise RuntimeError('my config is broken')\n", "RuntimeError: my config is broken"),
    ("x = 1\n", "defines no get_config()"),
])
def test_broken_config_files(cli, tmp_path, body, message):
    config = _write(tmp_path / "mine.py", body)
    result = cli(tmp_path / "w", "--config.batch_size=2", config=config)
    _user_error(result, message)
    assert "mine.py" in result.stderr


def test_debug_shows_the_traceback_of_a_user_error(cli, tmp_path):
    result = cli(tmp_path / "w", "--config.optimizer=adam", "--debug")
    assert result.returncode == 2 and "Traceback" in result.stderr and "config.optimizer='adam'" in result.stderr


def test_workdir_that_is_a_file(cli, tmp_path):
    _user_error(cli(_write(tmp_path / "file", "x"), *FAST), "is a file, not a directory")


@pytest.fixture(scope="module")
def finished(cli, tmp_path_factory):
    """A finished 2-step run of the tiny config (checkpoints at steps 1 and 2), copied by the fault cases."""
    workdir = tmp_path_factory.mktemp("finished")
    result = cli(workdir, *FAST)
    assert result.returncode == 0, result.stderr[-3000:]
    assert complete_checkpoints(workdir) == [1, 2]
    return workdir


def _copy(finished, tmp_path):
    import shutil

    target = tmp_path / "w"
    shutil.copytree(finished, target)
    return target


@pytest.mark.parametrize("override,message", [
    ("--config.optimizer=lamb", "optimizer: 'adamw' in the checkpoint, 'lamb' now"),
    ("--config.model=albert-base-v2", "model.hidden_size: 64 in the checkpoint, 768 now"),
])
def test_workdir_of_another_run_is_refused_by_field(cli, finished, tmp_path, override, message):
    workdir = _copy(finished, tmp_path)
    result = cli(workdir, *FAST, override, "--config.total_steps=3")
    _user_error(result, message)
    assert complete_checkpoints(workdir) == [1, 2]  # nothing touched


def test_corrupt_newest_checkpoint_is_moved_aside_and_the_run_resumes(cli, finished, tmp_path):
    workdir = _copy(finished, tmp_path)
    data = workdir / "checkpoints" / "2" / "state" / "ocdbt.process_0" / "d"
    for name in os.listdir(data):
        with open(data / name, "r+b") as f:
            f.truncate(7)
    result = cli(workdir, *FAST, "--config.total_steps=3")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "checkpoints/2 is unreadable" in result.stderr and "unreadable_checkpoints/2" in result.stderr
    assert "resuming from" in result.stderr and "checkpoints/1" in result.stderr
    assert complete_checkpoints(workdir) == [1, 2, 3]  # step 2 retrained, step 3 new
    assert os.path.isdir(workdir / "unreadable_checkpoints" / "2" / "state")  # kept, never deleted
    assert train_losses(workdir)[2] == pytest.approx(train_losses(finished)[2], rel=1e-6)


def test_unreadable_config_json_of_init_from(cli, tmp_path):
    source = tmp_path / "hf"
    os.makedirs(source)
    _write(source / "config.json", "{broken")
    result = cli(tmp_path / "w", *FAST, f"--config.init_from={source}")
    _user_error(result, "config.json: not valid JSON")


def test_full_disk_during_a_save_keeps_the_finished_checkpoints(tmp_path, monkeypatch):
    """A failing filesystem call while a checkpoint is finalised (what a full disk does): a clear error naming the
    checkpoint, the complete ones intact, and the next run resumes from them."""
    from train import checkpoint as checkpoint_lib
    from train import loop
    from train.experiment import load_config

    config = load_config(TINY)
    with config.unlocked():
        config.total_steps, config.checkpoint_every, config.eval_every = 3, 1, 0
        config.batch_size = 8  # the test process fakes 8 devices: one row each
        config.async_checkpointing = False
        config.sample_tokens = 0
    real_rename = os.rename

    def failing_rename(src, dst, *args, **kwargs):
        if os.path.basename(str(dst)) == "3":
            raise OSError(errno.ENOSPC, "No space left on device", str(dst))
        return real_rename(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "rename", failing_rename)
    # Two 3-step runs of the tiny model: compiling (mostly XLA's optimiser) was most of the time (as in cli_env).
    with unoptimised(), pytest.raises(
            checkpoint_lib.CheckpointWriteError,
            match=r"could not write checkpoint .*/checkpoints/3 \(.*No space left on device.*\); the "
                  r"complete checkpoints \[1, 2\] are intact"):
        loop.run(config, str(tmp_path), progress=False)
    monkeypatch.setattr(os, "rename", real_rename)
    assert complete_checkpoints(tmp_path) == [1, 2]
    with unoptimised():
        summary = loop.run(config, str(tmp_path), progress=False)
    assert summary["start_step"] == 2 and summary["final_step"] == 3


def test_aot_without_libtpu_is_a_user_error(tmp_path):
    """`python -m train.aot` on a machine without the [tpu] extra: exit 2 with the fix, not 1 ("does not fit")."""
    shadow = tmp_path / "shadow"
    os.makedirs(shadow / "libtpu")
    _write(shadow / "libtpu" / "__init__.py", "raise ImportError('libtpu is not installed here')\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(shadow), ROOT]), "JAX_PLATFORMS": "cpu",
           "XLA_FLAGS": ""}
    result = subprocess.run([sys.executable, "-m", "train.aot", "--config", TINY, "--topology", "v5e:2x2"],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    _user_error(result, "train.aot needs libtpu")


# Fine-tuning: a bad row of the user's files, and `python -m train.evaluate` on what is not a run.
def _finetune_config(name: str) -> str:
    return os.path.join(ROOT, "configs", f"finetune_{name}.py")


_REVIEW = '{"text": "fine", "label": 1}\n'
_QA = '{"question": "what is the code ?", "context": "the code is apple", "answers": ["apple"]}\n'


@pytest.mark.parametrize("name,train,held_out,message", [
    ("classification", _REVIEW + '{"text": "bad", "label": 7}\n', None,
     "{train}:2: field 'label': label 7 is out of range [0, 2)"),
    ("classification", _REVIEW + '{"text": "bad", "label": 0}\n', _REVIEW + '{"txt": "no text field", "label": 0}\n',
     "{eval}:2: field 'text' is missing (the row has: label, txt; config.data.schema names the fields to read)"),
    ("classification", "text,class\nfine,1\n", None, "{train}:1: field 'label' is missing from the header"),
    ("ner", '{"tokens": ["Anna", "met", "Omar"], "tags": ["B-PER", "O", "B-XYZ"]}\n', None,
     "{train}:1: field 'tags': label 'B-XYZ' is not one of the classes"),
    ("qa", _QA + '{"question": "q", "context": "the code is apple", "answers": ["zebra"]}\n', None,
     "{train}:2: field 'answers': answer 0 'zebra' is not in the context"),
    ("multiple_choice", '{"text": "pick", "choices": ["a", "b"], "label": "c"}\n', None,
     "{train}:1: field 'label': expected a class id (int) got 'c'"),
])
def test_bad_rows_of_fine_tuning_files_name_file_line_and_field(cli, tmp_path, name, train, held_out, message):
    suffix = ".csv" if train.startswith("text,") else ".jsonl"
    files = {"train": _write(tmp_path / f"train{suffix}", train)}
    files["eval"] = _write(tmp_path / "eval.jsonl", held_out) if held_out is not None else ""
    if name == "ner":  # tags named, so the unknown one is a bad label, not a new class
        labels = ["--config.data.labels=('O', 'B-PER', 'I-PER', 'B-LOC')"]
    else:
        labels = []
    result = cli(tmp_path / "w", *FAST, f"--config.data.train_file={files['train']}",
                 f"--config.data.eval_file={files['eval']}", "--config.warmup_steps=0", *labels,
                 f"--config.data.cache_dir={tmp_path / 'spm'}", config=_finetune_config(name))
    _user_error(result, "error: " + message.format(**files))
    assert not os.path.exists(tmp_path / "w" / "checkpoints")


def test_fine_tuning_on_user_files_through_the_cli_counts_unanswerable_rows(fast_cli, fast_cli_env, tmp_path):
    """A QA run on the user's CSV file, some of whose rows have no answer: they are trained on and counted in a
    note, never skipped silently; `train.evaluate` then names a bad row of another file, and scores a good one."""
    answer = '"[{""text"": ""apple"", ""answer_start"": 12}]"'
    train = _write(tmp_path / "train.csv", "question,context,answers\n"
                   f"what is the code ?,the code is apple,{answer}\n"
                   "what is the code ?,nothing here,[]\n"
                   f"what is the code ?,the code is apple,{answer}\n")
    workdir = tmp_path / "w"
    result = fast_cli(workdir, "--config.total_steps=2", "--config.checkpoint_every=2", "--config.eval_every=0",
                 "--config.warmup_steps=0", "--config.batch_size=2", "--config.data.buckets=(48,)",
                 f"--config.data.train_file={train}", "--config.data.eval_file=",
                 f"--config.data.cache_dir={tmp_path / 'spm'}", config=_finetune_config("qa"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"note: {train}: 1 of 3 rows have no answer" in result.stderr, result.stderr[-3000:]

    def evaluate(*args):
        return subprocess.run([sys.executable, "-m", "train.evaluate", "--workdir", str(workdir), *args], cwd=ROOT,
                              env=fast_cli_env, capture_output=True, text=True, timeout=300)

    _user_error(evaluate(), "error: --eval_file: the run has no eval file (config.data.eval_file); name one")
    bad = _write(tmp_path / "bad.jsonl", '{"question": "q", "context": "the code is apple", "answers": ["pear"]}\n')
    _user_error(evaluate("--eval_file", bad), f"error: {bad}:1: field 'answers': answer 0 'pear' is not in the context")
    good = _write(tmp_path / "good.jsonl", '{"question": "q", "context": "the code is apple", "answers": ["apple"]}\n')
    scored = evaluate("--eval_file", good)
    assert scored.returncode == 0, scored.stderr[-3000:]
    result = json.loads(scored.stdout.strip().splitlines()[-1])
    assert result["step"] == 2 and result["eval_file"] == good and 0 <= result["metrics"]["exact_match"] <= 100


@pytest.mark.parametrize("args,message", [
    (("--workdir", "/no/such/run"), "error: --workdir='/no/such/run': no such directory"),
    (("--step", "3"), "error: the following arguments are required: --workdir"),
])
def test_evaluate_user_errors(cli_env, args, message):
    result = subprocess.run([sys.executable, "-m", "train.evaluate", *args], cwd=ROOT, env=cli_env,
                            capture_output=True, text=True, timeout=300)
    _user_error(result, message)


def test_evaluate_a_step_the_run_does_not_have(cli_env, finished):
    result = subprocess.run([sys.executable, "-m", "train.evaluate", "--workdir", str(finished), "--step", "9"],
                            cwd=ROOT, env=cli_env, capture_output=True, text=True, timeout=300)
    _user_error(result, "error: --step=9: no such checkpoint in")
    assert "steps: [1, 2]" in result.stderr
