"""The bad-input catalogue, in process: what a user gets for a wrong config dict, model input, label or checkpoint
file, for every family. Each case asserts the exception type and that the message names the field / argument /
file, so no mistake is silent or ends in a library traceback. (Command line, workdir and fault cases: tests/e2e/
test_bad_runs.py.) A new family adds its tiny config to ``tests/families.py`` and is covered by every case."""

from __future__ import annotations

import functools
import json
import os
import pickle
import warnings

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxmodels
from jaxmodels import hf_io
from layers.checks import checked

from tests.families import FAMILIES, NAMES  # a new family adds its tiny config there

B, L, V = 2, 8, 40


def _config(name, **changes):
    return {**FAMILIES[name]["config"], **changes}


@functools.cache
def _model(name: str, head: str):
    module = jaxmodels.from_config(_config(name), architecture=FAMILIES[name][head])
    return module, jax.jit(lambda key: jaxmodels.init_params(module, key))(jax.random.PRNGKey(0))


@functools.cache
def _mlm_loss(name: str, with_checks: bool):
    """The masked-LM loss of a family's tiny model, jitted, with or without the checks compiled in (one compile
    per family and mode, shared by the cases)."""
    module, _ = _model(name, "mlm")

    def loss(p, ids, y):
        return module.apply({"params": p}, input_ids=ids, labels=y).loss

    return checked(loss) if with_checks else jax.jit(loss)


@functools.cache
def _checked_logits(name: str):
    module, _ = _model(name, "mlm")
    return checked(lambda p, ids: module.apply({"params": p}, input_ids=ids).logits)


def _ids(seed=0):
    return jnp.asarray(np.random.RandomState(seed).randint(1, V, (B, L)), jnp.int32)


def _cls_ids(name):
    """``_ids()``, ending with the family's ``cls_eos`` once per row where its classifier pools at the eos."""
    ids, eos = _ids(), FAMILIES[name].get("cls_eos")
    return ids if eos is None else jnp.where(ids == eos, eos + 1, ids).at[:, -1].set(eos)


# ------------------------------------------------------------------------------------------------------------
# HF config dicts
@pytest.mark.parametrize("name", NAMES)
def test_misspelt_key_warns_naming_it_and_strict_refuses(name):
    with pytest.warns(UserWarning, match=r"\['hiden_size'\] is not a field"):
        jaxmodels.from_config(_config(name, hiden_size=64))
    with pytest.raises(ValueError, match=r"\['hiden_size'\] is not a field.*refused"):
        jaxmodels.from_config(_config(name, hiden_size=64), strict=True)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("kind,value,rule", [
    ("bool_field", "false", r"must be a bool"), ("int_field", "64", r"must be an int"),
    ("int_field", 64.0, r"must be an int"), ("int_field", True, r"must be an int"),
    ("float_field", "1e-12", r"must be a number"), ("act_field", "swishy", r"must be one of"),
    ("int_field", -8, r"must be a positive integer"),
])
def test_config_values_are_type_checked_naming_the_field(name, kind, value, rule):
    field = FAMILIES[name][kind]
    if field is None:
        pytest.skip(f"{name} has no such field")
    with pytest.raises(ValueError, match=rf"\.{field}={value!r}: {rule}".replace("(", r"\(").replace(")", r"\)")):
        jaxmodels.from_config(_config(name, **{field: value}))


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("id2label,rule", [
    ({"a": "x", "b": "y"}, r"id2label=.*keys must be label indices"),
    ({"0": "x", "2": "y"}, r"id2label: keys must be 0 \.\. num_labels - 1"),
    (["x", "y"], r"id2label=\['x', 'y'\]: must be a dict"),
])
def test_bad_id2label_names_the_field(name, id2label, rule):
    with pytest.raises(ValueError, match=rule):
        jaxmodels.from_config(_config(name, id2label=id2label))


@pytest.mark.parametrize("config,rule", [
    ([1, 2], r"must be a dict"), ({"hidden_size": 8}, r"model_type=None is not supported"),
    ({"model_type": "gpt5"}, r"model_type='gpt5' is not supported"),
])
def test_config_that_names_no_model(config, rule):
    with pytest.raises(ValueError, match=rule):
        jaxmodels.from_config(config)


@pytest.mark.parametrize("name", NAMES)
def test_unknown_architecture_lists_the_available_ones(name):
    with pytest.raises(ValueError, match=r"architecture 'ForEverything' is not available.*available: \["):
        jaxmodels.from_config(_config(name), architecture="ForEverything")


# ------------------------------------------------------------------------------------------------------------
# Model inputs (checked before anything is traced)
def _apply(name, head, params=None, **inputs):
    module, init_params = _model(name, head)
    return module.apply({"params": init_params if params is None else params}, **inputs)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("inputs,rule", [
    (lambda: dict(input_ids=[[1, 2, 3]]), r"input_ids: expected an array .* got list"),
    (lambda: dict(input_ids=_ids()[0]), r"input_ids must have (rank 2|shape \[batch, length\])"),
    (lambda: dict(input_ids=_ids().astype(jnp.float32)), r"input_ids must be integer"),
    (lambda: dict(input_ids=jnp.zeros((B, 0), jnp.int32)), r"input_ids: shape \(2, 0\) has an empty dimension"),
    (lambda: dict(input_ids=jnp.zeros((0, L), jnp.int32)), r"input_ids: shape \(0, 8\) has an empty dimension"),
    (lambda: dict(input_ids=_ids().at[1, 3].set(V)), r"input_ids.*vocab_size=40"),
    (lambda: dict(input_ids=_ids().at[0, 0].set(-1)), r"input_ids.*vocab_size=40"),
    (lambda: dict(input_ids=_ids(), attention_mask=jnp.ones((B, L + 1), jnp.int32)),
     r"attention_mask has shape \(2, 9\)"),
    (lambda: dict(input_ids=jnp.ones((B, 64), jnp.int32)), r"(exceeds|beyond)"),
    (lambda: dict(input_ids=None), r"pass exactly one of input_ids or inputs_embeds"),
])
def test_bad_model_inputs_name_the_argument(name, inputs, rule):
    if name == "mega" and rule == r"(exceeds|beyond)":
        pytest.skip("MEGA has no position table: its rotary bias and EMA take any length")
    with pytest.raises(ValueError, match=rule):
        _apply(name, "mlm", **inputs())


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("bad,value", [((1, 2), V), ((0, 5), -3), ((1, 7), 10**6)])
def test_masked_lm_labels_out_of_range_fail_eagerly_and_under_checked_jit(name, bad, value):
    labels = jnp.full((B, L), -100, jnp.int32).at[0, 1].set(5).at[bad].set(value)
    _, params = _model(name, "mlm")
    if bad == (1, 2):  # eagerly (the forward runs op by op first, so once per family)
        with pytest.raises(ValueError, match=rf"labels: .*\[0, (vocab_size=)?40\) or -100.*got {value}"):
            _apply(name, "mlm", params, input_ids=_ids(), labels=labels)
    with pytest.raises(ValueError, match=rf"labels: .*got {value} at index \[{bad[0]} {bad[1]}\]"):
        _mlm_loss(name, True)(params, _ids(), labels)
    # Without the checked mode, jit stays free of checks: no error, and the out-of-bounds gather's loss is
    # meaningless (NaN here), which is what the checked mode is for.
    assert np.shape(_mlm_loss(name, False)(params, _ids(), labels)) == ()


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("labels,rule", [
    (lambda: jnp.asarray([0, 2]), r"labels: class ids must be in \[0, 2\) or -100.*got 2"),
    (lambda: jnp.asarray([0, 1, 1]), r"labels: shape \(3,\) does not match the logits \(2, 2\)"),
])
def test_classification_labels_are_checked(name, labels, rule):
    _, params = _model(name, "cls")
    with pytest.raises(ValueError, match=rule):
        _apply(name, "cls", params, input_ids=_cls_ids(name), labels=labels())


@pytest.mark.parametrize("problem,labels,rule", [
    (None, [0, -5], r"labels: class ids must be in \[0, 2\).*got -5 at index \[1\]"),
    # Float labels mean multi-label (HF's rule): one target per label, so [batch] floats are the wrong shape.
    (None, [0.0, 1.0], r"labels: shape \(2,\) does not match the logits \(2, 2\) \(multi-label"),
    ("multi_label_classification", [[0.0, 2.0], [1.0, 0.0]], r"labels: multi-label targets must be in \[0, 1\]"),
    ("multi_label_classification", [[0.0, 1.0, 0.0]], r"labels: shape \(1, 3\) does not match the logits"),
    ("regression", [[0.5, 1.0, 2.0]], r"labels: shape \(1, 3\) does not match the predictions"),
    ("single_label_classification", [0.0, 1.0], r"labels: class ids must be integers"),
])
def test_every_classification_loss_checks_its_labels(problem, labels, rule):
    from layers.losses import sequence_classification_loss

    with pytest.raises(ValueError, match=rule):
        sequence_classification_loss(jnp.zeros((2, 2)), jnp.asarray(labels), num_labels=2, problem_type=problem)


@pytest.mark.parametrize("name", NAMES)
def test_out_of_vocabulary_ids_under_checked_jit(name):
    _, params = _model(name, "mlm")
    run = _checked_logits(name)
    with pytest.raises(ValueError, match=r"input_ids: ids must be in \[0, vocab_size=40\); got 99 at index \[1 4\]"):
        run(params, _ids().at[1, 4].set(99))
    assert run(params, _ids()).shape == (B, L, V)


# ------------------------------------------------------------------------------------------------------------
# Checkpoint directories and files
@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    module, params = _model("albert", "mlm")
    path = str(tmp_path_factory.mktemp("saved"))
    jaxmodels.save_pretrained(module, params, path)
    return path


def _copy(saved, tmp_path) -> str:
    import shutil

    target = str(tmp_path / "ckpt")
    shutil.copytree(saved, target)
    return target


def test_missing_directory_and_config(tmp_path):
    with pytest.raises(ValueError, match=r"is not a directory"):
        jaxmodels.from_pretrained(str(tmp_path / "nope"))
    with pytest.raises(ValueError, match=r"has no config\.json"):
        jaxmodels.from_pretrained(str(tmp_path))


@pytest.mark.parametrize("content,rule", [
    ("{not json", r"config\.json: not valid JSON \(.* at line 1 column 2\)"),
    ("[1, 2]", r"config\.json: holds a JSON list, not an object"),
    ('{"hidden_size": 8}', r"config\.json: has no 'model_type'"),
    ('{"model_type": "albert", "hidden_size": "big"}', r"AlbertConfig\.hidden_size='big': must be an int"),
])
def test_bad_config_json_names_the_file(saved, tmp_path, content, rule):
    path = _copy(saved, tmp_path)
    with open(os.path.join(path, "config.json"), "w") as f:
        f.write(content)
    with pytest.raises(ValueError, match=rule):
        jaxmodels.from_pretrained(path)


def test_truncated_safetensors_names_the_file(saved, tmp_path):
    path = _copy(saved, tmp_path)
    weights = os.path.join(path, "model.safetensors")
    with open(weights, "r+b") as f:
        f.truncate(os.path.getsize(weights) // 2)
    with pytest.raises(ValueError, match=r"model\.safetensors: not a readable safetensors file.*truncated"):
        jaxmodels.from_pretrained(path)


def test_shard_index_naming_a_missing_file(saved, tmp_path):
    path = _copy(saved, tmp_path)
    os.remove(os.path.join(path, "model.safetensors"))
    with open(os.path.join(path, "model.safetensors.index.json"), "w") as f:
        json.dump({"weight_map": {"albert.embeddings.word_embeddings.weight": "model-00001-of-00002.safetensors"}}, f)
    with pytest.raises(ValueError, match=r"model-00001-of-00002\.safetensors: missing \(named by the checkpoint's"):
        jaxmodels.from_pretrained(path)
    with open(os.path.join(path, "model.safetensors.index.json"), "w") as f:
        f.write("{")
    with pytest.raises(ValueError, match=r"model\.safetensors\.index\.json: not valid JSON"):
        jaxmodels.from_pretrained(path)


class _Payload:
    """Unpickling this runs ``os.system`` (what a malicious checkpoint does); the loader must never do it."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_pickled_code_is_refused_and_never_runs(saved, tmp_path):
    torch = pytest.importorskip("torch")
    path = _copy(saved, tmp_path)
    os.remove(os.path.join(path, "model.safetensors"))
    marker = str(tmp_path / "pwned")
    torch.save({"albert.embeddings.word_embeddings.weight": torch.zeros(2), "x": _Payload(marker)},
               os.path.join(path, "pytorch_model.bin"), pickle_protocol=pickle.HIGHEST_PROTOCOL)
    with pytest.raises(ValueError, match=r"pytorch_model\.bin: refused\. .*can run arbitrary code.*safetensors"):
        jaxmodels.from_pretrained(path)
    assert not os.path.exists(marker)
    with open(os.path.join(path, "pytorch_model.bin"), "wb") as f:
        f.write(b"PK\x03\x04 truncated")
    with pytest.raises(ValueError, match=r"pytorch_model\.bin: not a readable PyTorch checkpoint"):
        jaxmodels.from_pretrained(path)


def test_weights_of_another_model(saved, tmp_path):
    path = _copy(saved, tmp_path)
    config = json.load(open(os.path.join(path, "config.json")))
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump({**config, "hidden_size": 32, "intermediate_size": 24}, f)
    with pytest.raises(ValueError, match=r"checkpoint tensor albert\..* has shape .* which does not fit"):
        jaxmodels.from_pretrained(path)
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(_config("mega"), f)
    with pytest.raises(ValueError, match=r"holds none of the weights of MegaModel"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            jaxmodels.from_pretrained(path)


def test_doorway_refuses_no_files(tmp_path):
    os.makedirs(tmp_path / "w")
    with open(tmp_path / "w" / "config.json", "w") as f:
        json.dump(_config("albert"), f)
    with pytest.raises(ValueError, match=r"holds no model\.safetensors.*refused"):
        jaxmodels.from_pretrained(str(tmp_path / "w"))
    assert isinstance(hf_io, object)


def test_unboxed_params_only():
    module, params = _model("albert", "mlm")
    assert not any(isinstance(x, nn.Partitioned) for x in jax.tree.leaves(params, is_leaf=lambda x: isinstance(
        x, nn.Partitioned)))


# ------------------------------------------------------------------------------------------------------------
# REALM: its models take candidates, retrieved blocks and an index rather than one [batch, length] head, so they
# have a section of their own.
_REALM = dict(model_type="realm", vocab_size=V, hidden_size=8, retriever_proj_size=4, num_hidden_layers=1,
              num_attention_heads=2, intermediate_size=12, max_position_embeddings=16, num_candidates=3,
              span_hidden_size=6, max_span_width=3, reader_beam_size=2, reader_seq_len=12, num_block_records=5,
              searcher_beam_size=4)


@functools.cache
def _realm(architecture: str):
    """The module and its abstract params: every check below fails before a param is read, so none is computed."""
    module = jaxmodels.from_config(_REALM, architecture=architecture)
    return module, jaxmodels.abstract_params(module)


def _realm_apply(architecture: str, *args, variables=None, **kwargs):
    module, params = _realm(architecture)
    return module.apply({"params": params, **(variables or {})}, *args, **kwargs)


def _blocks(rows=5, dtype=jnp.int32, width=6):
    from jaxmodels.realm import BlockTokens

    return BlockTokens(jnp.ones((rows, width), dtype), jnp.full((rows,), width, jnp.int32), cls_token_id=2,
                       sep_token_id=3, pad_token_id=0, special_ids=(0, 1, 2, 3))


@pytest.mark.parametrize("architecture,inputs,rule", [
    ("RealmScorer", lambda: dict(input_ids=_ids(), candidate_input_ids=jnp.ones((B, 2, L), jnp.int32)),
     r"candidate_input_ids has 2 candidates per example .*config\.num_candidates=3"),
    ("RealmScorer", lambda: dict(input_ids=_ids(), candidate_input_ids=jnp.ones((B, 3, L), jnp.int32).at[0, 1, 2].set(V)),
     r"candidate_input_ids: ids must be in \[0, vocab_size=40\)"),
    ("RealmKnowledgeAugEncoder", lambda: dict(input_ids=jnp.ones((B, 4, L), jnp.int32)),
     r"input_ids has 4 candidates per example .*config\.num_candidates=3"),
    ("RealmKnowledgeAugEncoder", lambda: dict(input_ids=jnp.ones((B, 3, L), jnp.int32), labels=_ids()),
     r"relevance_score is required with labels"),
    ("RealmKnowledgeAugEncoder", lambda: dict(input_ids=jnp.ones((B, 3, L), jnp.int32), labels=_ids().at[1, 1].set(V),
                                              relevance_score=jnp.zeros((B, 3))),
     r"labels: token ids must be in \[0, vocab_size=40\) or -100.*got 40"),
    ("RealmKnowledgeAugEncoder", lambda: dict(input_ids=jnp.ones((B, 3, L), jnp.int32), labels=_ids(),
                                              relevance_score=jnp.zeros((B, 2))),
     r"relevance_score has shape \(2, 2\); expected \(2, 3\)"),
    ("RealmReader", lambda: dict(input_ids=_ids(), relevance_score=jnp.zeros(2), block_mask=jnp.ones((2, L), bool)),
     r"token_type_ids is required"),
    ("RealmReader", lambda: dict(input_ids=_ids()[:, :2], token_type_ids=_ids()[:, :2] * 0,
                                 relevance_score=jnp.zeros(2), block_mask=jnp.ones((2, 2), bool)),
     r"input length 2 must be >= config\.max_span_width=3"),
    ("RealmReader", lambda: dict(input_ids=_ids(), token_type_ids=_ids() * 0, relevance_score=jnp.zeros(4),
                                 block_mask=jnp.ones((4, L), bool), start_positions=jnp.zeros(4, jnp.int32),
                                 end_positions=jnp.zeros(4, jnp.int32), has_answers=jnp.ones(4, bool)),
     r"start_positions has shape \(4,\); expected \[S=4, max_answers\]"),
    ("RealmEmbedder", lambda: dict(input_ids=jnp.ones((B, 20), jnp.int32)), r"exceeds max_position_embeddings=16"),
])
def test_realm_bad_inputs_name_the_field(architecture, inputs, rule):
    with pytest.raises(ValueError, match=rule):
        _realm_apply(architecture, **inputs())


@pytest.mark.parametrize("change,rule", [
    (dict(block_emb=jnp.zeros((6, 4))), r"block_emb has shape \(6, 4\); expected \[num_block_records=5"),
    (dict(block_emb=jnp.zeros((5, 4), jnp.int32)), r"block_emb must be floating point"),
    (dict(blocks=_blocks(rows=4)), r"blocks\.token_ids has shape \(4, 6\); expected \[5 \(the rows of block_emb\)"),
    (dict(blocks=_blocks(dtype=jnp.float32)), r"blocks\.token_ids must be integer token ids, got float32"),
    (dict(blocks=None), r"blocks: the pre-tokenised evidence blocks .* are required"),
    (dict(beam_size=6), r"beam_size=6 is larger than the index \(num_block_records=5\)"),
    (dict(deterministic=False, config=dict(searcher_beam_size=9)),
     r"searcher_beam_size=9 is larger than the index \(num_block_records=5\)"),
    (dict(answer_ids=jnp.ones((B, 3), jnp.int32)), r"answer_ids has shape \(2, 3\); expected \[batch=2, answers"),
    (dict(no_buffers=True), r"block_emb: missing; apply with \{'params': params, 'buffers'"),
])
def test_realm_open_qa_checks_the_index_and_the_block_store(change, rule):
    module, params = _realm("RealmForOpenQA")
    if "config" in change:
        module = module.clone(config=module.config.replace(**change["config"]))
    variables = {"params": params}
    if not change.get("no_buffers"):
        variables["buffers"] = {"block_emb": change.get("block_emb", jnp.zeros((5, 4)))}
    kwargs = {k: v for k, v in change.items() if k in ("beam_size", "deterministic", "answer_ids")}
    with pytest.raises(ValueError, match=rule):
        module.apply(variables, _ids(), blocks=change.get("blocks", _blocks()), **kwargs)


# ------------------------------------------------------------------------------------------------------------
# Fine-tuning files and keys: every mistake names the file, line and field (or the config key), never a silent skip
def _task_config(name: str, tmp_path, train, eval_rows=None, **changes):
    """The fine-tuning preset `name` reading `train` (rows, or the file's raw text) as its train file."""
    from tests.config_keys import set_keys
    from train.experiment import load_config

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    config = load_config(os.path.join(root, "configs", f"finetune_{name}.py"))

    def write(file_name, content):
        path = tmp_path / file_name
        path.write_text(content if isinstance(content, str) else "".join(json.dumps(r) + "\n" for r in content))
        return str(path)

    config.data.train_file = write(changes.pop("file_name", "train.jsonl"), train)
    if eval_rows is not None:
        config.data.eval_file = write("eval.jsonl", eval_rows)
    config.data.cache_dir = str(tmp_path / "spm")
    return set_keys(config, changes)


def _task_data(config):
    from train import finetune
    from train.experiment import resolve

    return finetune.TaskData(resolve(config))


_REVIEWS = [{"text": "the film was excellent", "label": "positive"}, {"text": "boring", "label": "negative"}]


@pytest.mark.parametrize("name,train,changes,rule", [
    ("classification", [{"text": "a", "label": 0}, {"text": "b", "label": 1}, {"text": "c", "label": 5}], {},
     r"train\.jsonl:3: field 'label': label 5 is out of range \[0, 2\)"),
    ("classification", _REVIEWS + [{"text": "meh", "label": "so-so"}], {"data.labels": ("negative", "positive")},
     r"train\.jsonl:3: field 'label': label 'so-so' is not one of the classes 'negative', 'positive'"),
    ("classification", _REVIEWS + [{"text": "meh", "label": "so-so"}], {},
     r"config\.model\.num_labels=2: the labels of .*train\.jsonl \('negative', 'positive', 'so-so'\) are 3 "
     r"classes; set config\.model\.num_labels=3"),
    ("classification", [_REVIEWS[0], {"text": "no label here"}], {},
     r"train\.jsonl:2: field 'label' is missing \(the row has: text; config\.data\.schema names the fields"),
    ("classification", [_REVIEWS[0], {"sentence": "x", "label": "negative"}], {"data.schema.text": "sentence"},
     r"train\.jsonl:1: field 'sentence' is missing \(the row has: label, text"),
    ("classification", '{"text": "fine", "label": "positive"}\n{"text": "oops", "label": }\n', {},
     r"train\.jsonl:2: not valid JSON \(Expecting value at column 27\)"),
    ("classification", "text,label\nfine,1\n", {"file_name": "train.csv", "data.schema.label": "class"},
     r"train\.csv:1: field 'class' is missing from the header \(columns: text, label"),
    ("classification", [{"text": 7, "label": "positive"}], {},
     r"train\.jsonl:1: field 'text': expected a string, got int 7"),
    ("ner", [{"tokens": ["Anna", "met", "Omar"], "tags": ["B-PER", "O"]}], {},
     r"train\.jsonl:1: field 'tags': expected one tag per word \(3 words in 'tokens'\)"),
    ("ner", [{"tokens": ["Anna"], "tags": ["B-ORG"]}], {},
     r"train\.jsonl:1: field 'tags': label 'B-ORG' is not one of the classes 'O', 'B-PER', 'I-PER', 'B-LOC'"),
    ("qa", [{"question": "what is the code ?", "context": "the code is apple", "answers": ["zebra"]}], {},
     r"train\.jsonl:1: field 'answers': answer 0 'zebra' is not in the context"),
    ("qa", [{"question": "q", "context": "the code is apple", "answers": {"text": ["apple"], "answer_start": [3]}}],
     {}, r"train\.jsonl:1: field 'answers': answer 0 'apple' is not at answer_start=3 of the context \(there: ' cod"),
    ("multiple_choice", [{"text": "pick the fruit", "choices": ["apple", "horse", "red", "saw"], "label": 0},
                         {"text": "pick the tool", "choices": ["saw", "red", "plum"], "label": 0}], {},
     r"train\.jsonl:2: field 'choices': 3 choices; every row needs 4, as .*train\.jsonl:1 has"),
    ("multiple_choice", [{"text": "pick the fruit", "choices": ["apple", "horse", "red", "saw"], "label": 4}], {},
     r"train\.jsonl:1: field 'label': label 4 is out of range \[0, 4\)"),
])
def test_bad_fine_tuning_rows_name_the_file_line_and_field(tmp_path, name, train, changes, rule):
    config = _task_config(name, tmp_path, train, **changes)
    with pytest.raises(ValueError, match=rule):
        _task_data(config)


def test_bad_eval_row_names_the_eval_file(tmp_path):
    config = _task_config("classification", tmp_path, _REVIEWS, eval_rows=[_REVIEWS[1], {"text": "x", "label": "?"}])
    with pytest.raises(ValueError, match=r"eval\.jsonl:2: field 'label': label '\?' is not one of the classes"):
        _task_data(config)


def test_unanswerable_rows_are_counted_not_skipped(tmp_path):
    rows = [{"question": "what is the code ?", "context": "the code is apple", "answers": ["apple"]},
            {"question": "what is the code ?", "context": "nothing to see", "answers": []},
            {"question": "what is the code ?", "context": "still nothing", "answers": {"text": [], "answer_start": []}}]
    task = _task_data(_task_config("qa", tmp_path, rows, eval_every=0, **{"data.eval_file": ""}))
    assert task.notes == [f"{tmp_path / 'train.jsonl'}: 2 of 3 rows have no answer (trained to point at the first "
                          "token; scored as SQuAD 2.0 unanswerable questions)"]
    assert sorted(set(task.train.feature_rows.tolist())) == [0, 1, 2]  # every row is trained on


@pytest.mark.parametrize("name,changes,rule", [
    ("classification", {"data.train_file": "/no/such.jsonl"}, r"config\.data\.train_file='/no/such\.jsonl': no such file"),
    ("classification", {"data.train_file": "notes.txt"}, r"config\.data\.train_file='.*notes\.txt': unknown format"),
    ("classification", {"data.eval_file": ""}, r"config\.data\.eval_file='': needed to evaluate every "
                                                r"config\.eval_every=50 steps"),
    ("classification", {"data.schema.txt": "text"}, r"config\.data\.schema\.txt='text': unknown role"),
    ("classification", {"data.schema.label": ""}, r"config\.data\.schema\.label='': expected the name of the field"),
    ("classification", {"data.buckets": (16, 64)}, r"config\.data\.buckets=\(16, 64\): expected ascending lengths "
                                                   r">= 2 ending with config\.seq_len=32"),
    ("classification", {"objective.name": "token_classification"},
     r"config\.objective\.name='token_classification' trains a '\*ForTokenClassification' head; "
     r"config\.model\.architectures\[0\] is 'AlbertForSequenceClassification'"),
    ("classification", {"model.architectures": ["AlbertForMaskedLM"]},
     r"config\.objective\.name='finetune': config\.model\.architectures\[0\]='AlbertForMaskedLM' is no task head"),
    ("classification", {"objective.name": "mlm"}, r"config\.data\.train_file=.*labelled examples are for fine-tuning"),
    ("classification", {"best_metric": "entity_f1"}, r"config\.best_metric='entity_f1': not a metric of this task "
                                                      r"\(its metrics: loss, accuracy, f1, matthews\)"),
    ("classification", {"layer_decay": 1.5}, r"config\.layer_decay=1\.5: must be in \(0, 1\]"),
    ("qa", {"model.num_labels": 3}, r"config\.model\.num_labels=3: a question-answering head has 2 outputs"),
])
def test_bad_fine_tuning_keys_name_the_key(tmp_path, name, changes, rule):
    from tests.config_keys import set_keys
    from train.experiment import resolve

    config = set_keys(_task_config(name, tmp_path, _REVIEWS), changes)
    if "notes.txt" in str(changes.get("data.train_file", "")):
        config.data.train_file = str(tmp_path / "notes.txt")
        (tmp_path / "notes.txt").write_text("hello\n")
    with pytest.raises(ValueError, match=rule):
        _task_data(config) if "train_file" in str(changes) else resolve(config)
