"""The Colab notebooks (`colab/*.ipynb`), executed headlessly in their tiny setting so they cannot rot.

Each notebook reads its settings from environment variables in its first code cell
(`JAXMODELS_NOTEBOOK_SMOKE=1`: a tiny model for a dozen steps; `JAXMODELS_CHECKPOINT_DIR`: a local HF
directory instead of a Hub download). Cells tagged `colab-only` (the `pip install` from Git, TensorBoard) are
dropped before execution. The kernel is this interpreter (`sys.executable`, via a kernelspec written into a
temporary directory), sees 4 CPU devices, and runs in a temporary working directory.
"""

from __future__ import annotations

import glob
import json
import os
import random
import re
import sys

import nbformat
import pytest
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import AsyncKernelManager
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
COLAB = os.path.join(ROOT, "colab")
COLAB_ONLY = "colab-only"
KERNEL_NAME = "jaxmodels-notebook-test"
EXECUTED = {"tpu_quickstart.ipynb", "checkpoint_import.ipynb"}  # every notebook has an execution test below
CELL_TIMEOUT_S = 300


def _read(name: str) -> nbformat.NotebookNode:
    return nbformat.read(os.path.join(COLAB, name), as_version=4)


def _code_text(cell) -> str:
    """What a code cell printed or displayed as text (stdout, stderr, results), in order."""
    parts = []
    for out in cell.get("outputs", []):
        if out.output_type == "stream":
            parts.append(out.text)
        elif out.output_type in ("execute_result", "display_data"):
            parts.append(out.get("data", {}).get("text/plain", ""))
    return "".join(parts)


def execute(name: str, tmp_path, env: dict[str, str]) -> tuple[list, str]:
    """Runs colab/`name` without its colab-only cells -> (executed code cells, the working directory)."""
    nb = _read(name)
    nb.cells = [c for c in nb.cells if COLAB_ONLY not in c.metadata.get("tags", [])]
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    kernels = tmp_path / "kernels"
    (kernels / KERNEL_NAME).mkdir(parents=True)
    kernel_env = {
        # A few CPU devices, so the mesh cell has something to shard over.
        "XLA_FLAGS": "--xla_force_host_platform_device_count=4",
        "JAX_PLATFORMS": "cpu",
        # The checkout under test first (an editable install predating a package would miss it).
        "PYTHONPATH": os.pathsep.join(p for p in (ROOT, os.environ.get("PYTHONPATH", "")) if p),
        "JAXMODELS_NOTEBOOK_REPO": ROOT,  # the checkout whose configs/ the notebook reads
        # Keep TFDS data, tokenizers and compiled programs out of the home directory.
        "TFDS_DATA_DIR": str(tmp_path / "tfds"),
        "XDG_CACHE_HOME": str(tmp_path / "cache"),
        "JAX_COMPILATION_CACHE_DIR": str(tmp_path / "jax_cache"),
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
        "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0",
        "PYDEVD_DISABLE_FILE_VALIDATION": "1",
        **env,
    }
    spec = {"argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
            "display_name": "jaxmodels test kernel", "language": "python", "env": kernel_env}
    (kernels / KERNEL_NAME / "kernel.json").write_text(json.dumps(spec))
    km = AsyncKernelManager(kernel_name=KERNEL_NAME, kernel_spec_manager=KernelSpecManager(kernel_dirs=[str(kernels)]))
    client = NotebookClient(nb, km=km, timeout=CELL_TIMEOUT_S, kernel_name=KERNEL_NAME,
                            resources={"metadata": {"path": str(cwd)}})
    try:
        client.execute(cleanup_kc=True)  # a client given `km` would otherwise leave the kernel running
    except CellExecutionError as error:
        pytest.fail(f"{name} failed:\n{str(error)[-6000:]}", pytrace=False)
    return [c for c in nb.cells if c.cell_type == "code"], str(cwd)


def _number(pattern: str, text: str) -> float:
    match = re.search(pattern, text)
    assert match, f"{pattern!r} not in:\n{text}"
    return float(match.group(1))


# ------------------------------------------------------------------------------------------------------------
# The committed files


def test_every_notebook_is_executed_by_a_test():
    assert {os.path.basename(p) for p in glob.glob(os.path.join(COLAB, "*.ipynb"))} == EXECUTED


@pytest.mark.parametrize("name", sorted(EXECUTED))
def test_notebook_is_committed_clean(name):
    nb = _read(name)
    nbformat.validate(nb)
    assert nb.nbformat == 4
    code = [c for c in nb.cells if c.cell_type == "code"]
    for cell in code:
        assert cell.outputs == [] and cell.execution_count is None, f"{name}: outputs not cleared:\n{cell.source}"
        if any(line.lstrip().startswith(("!", "%")) for line in cell.source.splitlines()):
            assert COLAB_ONLY in cell.metadata.get("tags", []), f"{name}: shell/magic cell not tagged:\n{cell.source}"
    # The settings cell comes first, so the test's environment variables take effect before anything else.
    assert "JAXMODELS_" in code[0].source and COLAB_ONLY not in code[0].metadata.get("tags", [])
    assert any(c.cell_type == "markdown" for c in nb.cells)


# ------------------------------------------------------------------------------------------------------------
# tpu_quickstart.ipynb


@pytest.mark.slow  # about a minute on 2 idle cores: two training runs, a restore, a generation
def test_tpu_quickstart(tmp_path):
    cells, cwd = execute("tpu_quickstart.ipynb", tmp_path, {"JAXMODELS_NOTEBOOK_SMOKE": "1"})
    text = {i: _code_text(c) for i, c in enumerate(cells)}
    everything = "\n".join(text.values())
    summary = text[len(cells) - 1]

    assert "cpu, 4 devices" in everything
    assert "data=-1,fsdp=2 -> {'data': 2, 'fsdp': 2" in everything
    first, last = (_number(p, summary) for p in (r"train loss: ([\d.]+) ->", r"train loss: [\d.]+ -> ([\d.]+)"))
    assert last < first - 0.1, summary
    assert re.search(r"resume: from step 4 to step 12, max loss difference 0\b", summary), summary
    assert "quickstart-preempted/checkpoints/4" in everything  # the loop's "resuming from ..." message
    assert re.search(r"export: .* reloads equal: True", summary), summary
    assert re.search(r"sample: In the beginning", summary), summary

    runs = os.path.join(cwd, "runs")
    with open(os.path.join(runs, "quickstart", "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    assert [r["step"] for r in rows if "split" not in r] == list(range(1, 13))
    assert [r["step"] for r in rows if "split" in r] == [6, 12]
    checkpoints = os.listdir(os.path.join(runs, "quickstart", "checkpoints"))
    assert sorted(int(n) for n in checkpoints if n.isdigit()) == [4, 8, 12]
    assert os.path.isfile(os.path.join(runs, "quickstart", "loss.png"))
    assert {"config.json", "model.safetensors", "spiece.model"} <= set(os.listdir(os.path.join(runs, "quickstart-hf")))
    with open(os.path.join(runs, "quickstart-hf", "config.json")) as f:
        assert json.load(f)["architectures"] == ["ReformerModelWithLMHead"]


# ------------------------------------------------------------------------------------------------------------
# checkpoint_import.ipynb

_WORDS = ["the", "capital", "of", "france", "is", "paris", "a", "mouse", "small", "animal", "that", "likes",
          "cheese", "city", "river", "big", "old", "new", "house", "cat", "dog", "eats", "and", "in", "on", "with",
          "from", "to", "it", "was", "they", "are"]


def build_tiny_albert_checkpoint(tmp_path) -> str:
    """A random 2-layer ALBERT saved by transformers, with a SentencePiece model in ALBERT's id layout."""
    import sentencepiece
    import torch
    import transformers

    rng = random.Random(0)
    corpus = [" ".join(rng.choice(_WORDS) for _ in range(rng.randint(4, 12))) + rng.choice([".", "!", "?"])
              for _ in range(500)]
    tmp_path.mkdir(parents=True, exist_ok=True)
    prefix = str(tmp_path / "spiece")
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus), model_prefix=prefix, vocab_size=100, model_type="unigram",
        # ALBERT's layout: <pad>=0, <unk>=1, [CLS]=2, [SEP]=3, [MASK]=4.
        pad_id=0, unk_id=1, bos_id=-1, eos_id=-1, control_symbols=["[CLS]", "[SEP]"],
        user_defined_symbols=["[MASK]"], hard_vocab_limit=False, character_coverage=1.0, num_threads=1,
        minloglevel=2)
    vocab_size = sentencepiece.SentencePieceProcessor(model_file=prefix + ".model").get_piece_size()
    directory = tmp_path / "tiny-albert"
    config = transformers.AlbertConfig(
        vocab_size=vocab_size, embedding_size=16, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=64, max_position_embeddings=64, pad_token_id=0, bos_token_id=2, eos_token_id=3)
    torch.manual_seed(0)
    transformers.AlbertForMaskedLM(config).eval().save_pretrained(directory)
    transformers.AlbertTokenizer(prefix + ".model").save_pretrained(directory)
    return str(directory)


@pytest.fixture
def tiny_albert_checkpoint(tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    return build_tiny_albert_checkpoint(tmp_path / "checkpoint")


def test_checkpoint_import(tmp_path, tiny_albert_checkpoint):
    cells, cwd = execute("checkpoint_import.ipynb", tmp_path, {"JAXMODELS_CHECKPOINT_DIR": tiny_albert_checkpoint})
    summary = _code_text(cells[-1])

    assert "model: AlbertForMaskedLM" in summary, summary
    assert len(re.findall(r"prediction: .* -> '\S+'", summary)) == 2, summary
    assert "token ids equal to transformers: True" in summary, summary
    assert "export reloads in jaxmodels with equal params: True" in summary, summary
    assert _number(r"Hub checkpoint: (\S+)", summary) < 1e-5, summary
    assert _number(r"our export: (\S+)", summary) < 1e-5, summary
    export = os.path.join(cwd, "albert-export")
    assert {"config.json", "model.safetensors", "spiece.model", "tokenizer_config.json"} <= set(os.listdir(export))
