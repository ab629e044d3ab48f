"""Fine-tuning learns: each kind of task head, trained from scratch by `train.loop.run` on its preset's synthetic
task (`tests/train/synthetic_tasks.py`, the shipped sample files), reaches a held-out metric within a bounded
number of steps that the same model untrained does not come near (chance level), and a run of each kind stopped by
SIGTERM resumes exactly. Also: `init_from` starts a head on a pretraining checkpoint's backbone, and `train.evaluate`
re-scores a stored checkpoint exactly as the run did.

The test process fakes 8 CPU devices (tests/conftest.py), so batches are multiples of 8.
"""

from __future__ import annotations

import json
import os
import signal
import warnings

import jax
import numpy as np
import pytest

import jaxmodels
from tests.config_keys import set_keys
from train import finetune, loop, metrics as metrics_lib
from train import state as state_lib
from train.data import task_batches
from train.experiment import load_config, resolve

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module", autouse=True)
def compilation_cache(tmp_path_factory):
    """A persistent compilation cache for this module's runs: a run's untrained evaluation, the resumed run and
    the re-evaluation compile what an earlier run of the same config compiled, and reuse it."""
    from jax.experimental.compilation_cache import compilation_cache as cache

    # Shared by the xdist workers (the parent of each worker's temp folder), so a config one of them compiled is
    # not compiled again by the other.
    directory = str(tmp_path_factory.getbasetemp().parent / "finetune_jax_cache")
    previous = {k: getattr(jax.config, k) for k in ("jax_compilation_cache_dir",
                                                    "jax_persistent_cache_min_compile_time_secs",
                                                    "jax_persistent_cache_min_entry_size_bytes")}
    jax.config.update("jax_compilation_cache_dir", directory)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    cache.reset_cache()
    yield
    for key, value in previous.items():
        jax.config.update(key, value)
    cache.reset_cache()


def preset(name: str, **changes):
    """The fine-tuning preset `configs/finetune_<name>.py` with `changes` ("data.buckets": ... by dotted key),
    evaluating and checkpointing only at the end."""
    config = load_config(os.path.join(ROOT, "configs", f"finetune_{name}.py"))
    return set_keys(config, {"eval_every": changes.get("total_steps", config.total_steps),
                             "async_checkpointing": False, "log_every": 10,
                             "checkpoint_every": changes.get("total_steps", config.total_steps), **changes})


def untrained_metrics(config) -> dict:
    """The eval metrics of the run's model at initialisation (the same seed, so the same init as the run)."""
    exp = resolve(config)
    mesh = exp.make_mesh()
    module = exp.build_module(mesh)
    init_key, _, eval_key = loop._seed_keys(config)
    state, shardings = state_lib.init_train_state(module, exp.tx, init_key, mesh, exp.rules)
    task = finetune.TaskData(exp)
    return finetune.TaskEvaluator(task, module, exp.objective, mesh, exp.rules, shardings.params, eval_key,
                                  batch_size=config.batch_size)(state.params)


# (preset, overrides, {metric: (trained at least, untrained at most)}); the first metric is re-scored by
# train.evaluate. Chance: accuracy 0.5 (two balanced classes), entity F1 ~0 (tags guessed), exact match ~0 (a word
# guessed in a context of 14-40), accuracy 0.25 (4 choices); seq2seq (3-7 words of 16, reversed): exact match ~0,
# ROUGE-L of a few guessed words ~0-20.
# One bucket each (bucketing is tested in test_finetune_data.py): one step to compile per run.
CLASSIFICATION = {"total_steps": 96, "warmup_steps": 8, "data.buckets": (32,)}
# Also the seq2seq path test's config (its beam search, the slowest compile here, comes from the cache).
SEQ2SEQ = {"total_steps": 150, "data.buckets": (16,)}
LEARNING = [
    ("classification", CLASSIFICATION, {"accuracy": (0.95, 0.7)}),
    ("ner", {"total_steps": 64, "warmup_steps": 8, "data.buckets": (64,)}, {"entity_f1": (0.9, 0.35)}),
    ("qa", {"total_steps": 96, "warmup_steps": 8, "data.buckets": (48,)}, {"exact_match": (90.0, 25.0)}),
    ("multiple_choice", {"total_steps": 300, "data.buckets": (24,)}, {"accuracy": (0.85, 0.45)}),
    ("seq2seq", SEQ2SEQ, {"rougeL": (90.0, 30.0), "exact_match": (60.0, 5.0)}),
]


def run_until_sigterm(config, workdir: str, steps: int, monkeypatch) -> dict:
    """`loop.run` with a SIGTERM sent while its `steps`-th step (counted from where it starts) draws its batch: the
    loop saves after that step and returns."""
    real_next = task_batches.TaskBatches.__next__
    drawn = []

    def next_then_stop(self):
        drawn.append(1)
        if len(drawn) == steps:
            os.kill(os.getpid(), signal.SIGTERM)
        return real_next(self)

    with monkeypatch.context() as patch:
        patch.setattr(task_batches.TaskBatches, "__next__", next_then_stop)
        return loop.run(config, workdir, progress=False)


def train_losses(workdir: str) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in metrics_lib.read_rows(workdir) if "loss" in r and "split" not in r}


@pytest.mark.parametrize("name,changes,thresholds", LEARNING, ids=[c[0] for c in LEARNING])
def test_each_head_learns_its_task_untrained_is_near_chance_and_a_killed_run_resumes_exactly(
        name, changes, thresholds, tmp_path, monkeypatch):
    from train import evaluate

    config = preset(name, **changes, log_every=1)
    summary = loop.run(config, str(tmp_path / "run"), progress=False)
    before = untrained_metrics(config)
    for metric, (trained, untrained) in thresholds.items():
        final = summary["last_eval"][f"eval_{metric}"]
        print(f"{name}: {metric} {final:.3f} after {config.total_steps} steps; untrained {before[metric]:.3f}")
        assert final >= trained, summary["last_eval"]
        assert before[metric] <= untrained, before
    # The best checkpoint by the task's headline metric is kept beside the latest.
    assert summary["best"]["step"] == config.total_steps and os.path.isdir(summary["best"]["checkpoint"])
    rows = metrics_lib.read_rows(str(tmp_path / "run"))
    assert [r["step"] for r in rows if r.get("split") == "eval"] == [config.total_steps]
    # `python -m train.evaluate` re-scores the checkpoint from the run's stored config and tokenizer.
    metric = next(iter(thresholds))
    final = summary["last_eval"][f"eval_{metric}"]
    assert evaluate.evaluate(str(tmp_path / "run"))["metrics"][metric] == pytest.approx(final, rel=1e-6)

    # Stopped at step 10, resumed and stopped again 5 steps later: the same losses as the run never stopped, to
    # the bit (the state and the batch iterator's position are in the checkpoint). The steps are the run's own
    # (the persistent compilation cache serves them).
    killed = str(tmp_path / "killed")
    assert run_until_sigterm(config, killed, 10, monkeypatch)["final_step"] == 10
    resumed = run_until_sigterm(config, killed, 5, monkeypatch)
    assert resumed["start_step"] == 10 and resumed["final_step"] == 15
    straight = train_losses(str(tmp_path / "run"))
    assert train_losses(killed) == {step: straight[step] for step in range(1, 16)}


def test_sigterm_then_resume_continues_the_same_run_and_evaluate_rescores_it(tmp_path, monkeypatch):
    """SIGTERM during a fine-tuning run saves and stops; the rerun resumes on exactly the losses (and batches) of a
    run never interrupted (the batch iterator's position is in the checkpoint), and `train.evaluate` re-scores its
    checkpoints exactly as the uninterrupted run scored them."""
    from train import evaluate

    # The learning test's config (its compiled steps are reused), with two buckets and a mid-run evaluation.
    config = preset("classification", **{**CLASSIFICATION, "data.buckets": (16, 32)}, log_every=1, eval_every=48,
                    checkpoint_every=48)
    loop.run(config, str(tmp_path / "straight"), progress=False)
    rows = metrics_lib.read_rows(str(tmp_path / "straight"))
    expected = {r["step"]: r["loss"] for r in rows if "loss" in r}
    evals = {r["step"]: r for r in rows if r.get("split") == "eval"}
    assert sorted(evals) == [48, 96]

    stopped = run_until_sigterm(config, str(tmp_path / "interrupted"), 30, monkeypatch)
    assert stopped["stopped_by_signal"] == signal.SIGTERM and stopped["final_step"] == 30
    resumed = loop.run(config, str(tmp_path / "interrupted"), progress=False)
    assert resumed["start_step"] == 30 and resumed["final_step"] == 96
    assert train_losses(str(tmp_path / "interrupted")) == expected  # exactly

    again = evaluate.evaluate(str(tmp_path / "interrupted"), 48)
    assert again["metrics"]["accuracy"] == evals[48]["eval_accuracy"]
    assert again["metrics"]["loss"] == pytest.approx(evals[48]["eval_loss"], rel=1e-5)
    assert json.load(open(tmp_path / "interrupted" / "evaluations" / "48.json"))["step"] == 48
    best = evaluate.evaluate(str(tmp_path / "interrupted"), "best")
    assert best["checkpoint"].startswith(str(tmp_path / "interrupted" / "best"))
    with pytest.raises(ValueError, match=r"--step=5: no such checkpoint .*steps: \[30, 48, 96\]"):
        evaluate.evaluate(str(tmp_path / "interrupted"), 5)


def test_init_from_a_masked_lm_checkpoint_starts_a_fresh_head_on_its_backbone(tmp_path):
    """`init_from` an `AlbertForMaskedLM` checkpoint with config.model giving only the head (`architectures`,
    `num_labels`): the backbone's weights are the checkpoint's, the classifier is new (with HF's warning)."""
    config = preset("classification", total_steps=1, warmup_steps=0)
    mlm = jaxmodels.from_config({**config.model.to_dict(), "architectures": ["AlbertForMaskedLM"]})
    params = jaxmodels.init_params(mlm, jax.random.PRNGKey(3))
    jaxmodels.save_pretrained(mlm, params, str(tmp_path / "mlm"))
    with config.ignore_type():
        config.model = {"architectures": ["AlbertForSequenceClassification"], "num_labels": 2}
    config.init_from = str(tmp_path / "mlm")
    exp = resolve(config)
    assert exp.model["hidden_size"] == mlm.config.hidden_size and exp.model["num_labels"] == 2
    mesh = exp.make_mesh()
    module = exp.build_module(mesh)
    with pytest.warns(UserWarning, match=r"newly initialised \(not in the checkpoint\).*classifier"):
        state, _ = state_lib.init_train_state(module, exp.tx, jax.random.key(0, impl="rbg"), mesh, exp.rules,
                                              init_from=config.init_from)
    loaded = jax.device_get(state.params)
    jax.tree.map(np.testing.assert_array_equal, loaded["albert"]["embeddings"], params["albert"]["embeddings"])
    jax.tree.map(np.testing.assert_array_equal, loaded["albert"]["encoder"], params["albert"]["encoder"])
    assert loaded["classifier"]["kernel"].shape == (mlm.config.hidden_size, 2)


def test_learning_rate_factors_head_and_layer_decay():
    """Per-row factors on stacked layers, the embeddings below the bottom row, the head at its own factor."""
    from train import optim
    from train.experiment import jax_eval_shape_boxed

    config = load_config(os.path.join(ROOT, "configs", "finetune_classification.py"))
    model = dict(config.model.to_dict(), num_hidden_groups=2, num_hidden_layers=4)
    module = jaxmodels.from_config(model)
    factors = optim.learning_rate_factors(jax_eval_shape_boxed(module), backbone="albert", head_factor=5.0,
                                          layer_decay=0.5)
    np.testing.assert_allclose(factors["albert"]["encoder"]["albert_layer_groups"]["ffn"]["kernel"], [0.25, 0.5])
    assert factors["albert"]["embeddings"]["word_embeddings"]["embedding"] == 0.125
    assert factors["albert"]["encoder"]["embedding_hidden_mapping_in"]["kernel"] == 0.125
    assert factors["albert"]["pooler"]["dense"]["kernel"] == 1.0 and factors["classifier"]["kernel"] == 5.0
    # The factors scale the optimizer's updates row by row: SGD's step is -lr * factor * grad.
    tx, _ = optim.build_optimizer("sgd", learning_rate=1.0, total_steps=2, schedule="constant", b1=0.0,
                                  factors=factors)
    params = jaxmodels.init_params(module, jax.random.PRNGKey(0))
    grads = jax.tree.map(np.ones_like, params)
    updates, _ = tx.update(grads, tx.init(params), params)
    kernel = updates["albert"]["encoder"]["albert_layer_groups"]["ffn"]["kernel"]
    np.testing.assert_allclose(kernel[0], -0.25) and np.testing.assert_allclose(kernel[1], -0.5)
    np.testing.assert_allclose(updates["classifier"]["kernel"], -5.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert resolve(preset("ner", layer_decay=0.8, head_learning_rate_factor=3.0)).tx is not None


def _task_batch(kind: str, num_labels: int, labels_dtype=np.int32, choices: int = 3) -> dict:
    """A batch of `kind` (2 rows of 8 tokens) as `train.data.task_batches` yields it."""
    shape = (2, choices, 8) if kind == "multiple_choice" else (2, 8)
    batch = {"input_ids": np.ones(shape, np.int32), "attention_mask": np.ones(shape, np.int32),
             "token_type_ids": np.zeros(shape, np.int32)}
    if kind == "question_answering":
        return {**batch, "start_positions": np.array([1, 0], np.int32), "end_positions": np.array([2, 0], np.int32)}
    if kind == "token_classification":
        return {**batch, "labels": np.full(shape, -100, np.int32)}
    if kind == "seq2seq":  # targets of their own length
        return {**batch, "labels": np.array([[1, 2, 3, -100, -100], [1, 1, 1, 1, 2]], np.int32)}
    if labels_dtype == np.float32:  # regression [batch] or multi-label [batch, num_labels]
        return {**batch, "labels": np.zeros((2,) if num_labels == 1 else (2, num_labels), np.float32)}
    return {**batch, "labels": np.zeros(2, np.int32)}


def _every_family_head():
    from tests.families import FAMILIES
    from train import objectives

    cases = []
    for name, entry in sorted(FAMILIES.items()):
        for architecture in jaxmodels.registry.get(entry["config"]["model_type"]).architectures:
            kind = objectives.head_kind(architecture)
            if kind == "sequence_classification":
                # The problem types are each family's own loss code (checked against HF by its parity tests):
                # traced here on one family.
                problems = ("single_label_classification", "regression", "multi_label_classification") \
                    if name == "albert" else ("single_label_classification",)
                cases += [(entry["config"], architecture, kind, problem) for problem in problems]
            elif kind is not None:
                cases.append((entry["config"], architecture, kind, ""))
    return cases


_HEADS = _every_family_head()


@pytest.mark.parametrize("hf_config,architecture,kind,problem", _HEADS,
                         ids=[f"{c[1]}-{c[3]}" if c[3] else c[1] for c in _HEADS])
def test_fine_tuning_objectives_trace_on_every_family_head(hf_config, architecture, kind, problem):
    """Every task head of every family trains under `finetune` (the objective picked from its class name, no family
    named in train/): the loss is a scalar and `predict` gives the head's outputs. Traced only (the models' losses
    equal HF's in each family's parity tests)."""
    from train import objectives
    from train.experiment import _takes_token_types

    num_labels = 1 if problem == "regression" else 2
    module = jaxmodels.from_config({**hf_config, "num_labels": num_labels,
                                    **({"problem_type": problem} if problem else {})}, architecture=architecture)
    params = jax.eval_shape(lambda key: jaxmodels.init_params(module, key), jax.random.PRNGKey(0))
    batch = _task_batch(kind, num_labels, np.float32 if problem in ("regression", "multi_label_classification")
                        else np.int32)
    eos = getattr(module.config, "eos_token_id", None)
    if eos is not None:  # rows end as a tokenizer ends them (BART's classifier pools at the last eos)
        batch["input_ids"][..., -1] = eos
    family = jaxmodels.registry.get(hf_config["model_type"])
    if not _takes_token_types(family, module.config, architecture):
        batch.pop("token_type_ids")
    objective = objectives.get_objective({"name": "finetune"})
    rngs = jax.random.PRNGKey(1)
    loss, metrics = jax.eval_shape(lambda p, b: objective(module, p, b, rngs, deterministic=False), params, batch)
    assert loss.shape == () and metrics["loss"].shape == ()
    out = jax.eval_shape(lambda p, b: objective.predict(module, p, b, rngs), params, batch)
    expected = {"question_answering": {"start_logits": (2, 8), "end_logits": (2, 8)},
                "token_classification": {"logits": (2, 8, num_labels)},
                "multiple_choice": {"logits": (2, 3)},
                "seq2seq": {"target_nll": (2,), "target_tokens": (2,)}}.get(kind, {"logits": (2, num_labels)})
    assert {k: v.shape for k, v in out.items()} == expected


def test_seq2seq_fine_tuning_trains_and_evaluates_by_beam_search_and_rouge(tmp_path):
    """A BART fine-tuning run on source -> target pairs: a few steps (the path, not learning), then an evaluation
    that decodes every eval source by beam search and scores the texts by ROUGE (rouge-score) and exact match;
    `train.evaluate` re-scores the checkpoint the same way."""
    from train import evaluate

    config = preset("seq2seq", **{**SEQ2SEQ, "total_steps": 2, "warmup_steps": 0})
    summary = loop.run(config, str(tmp_path), progress=False)
    metrics = {k.removeprefix("eval_"): v for k, v in summary["last_eval"].items() if k.startswith("eval_")}
    assert set(metrics) == {"loss", "rougeL", "rouge1", "rouge2", "exact_match"}
    assert 0 <= metrics["rougeL"] <= 100 and metrics["loss"] > 0
    assert summary["best"]["metric"] == "rougeL"
    again = evaluate.evaluate(str(tmp_path))["metrics"]
    assert again["rougeL"] == metrics["rougeL"] and again["loss"] == pytest.approx(metrics["loss"], rel=1e-5)
