"""Checkpoints as users meet them: Hub model ids resolved offline from a cache laid out here, loading straight into
a sharded layout, sharded safetensors, and HF <-> Orbax conversion (``python -m jaxmodels.convert``), for every
family. (The memory figures of a sharded load: ``benchmarks/sharded_load.py``.)"""

from __future__ import annotations

import functools
import os
import tempfile
import shutil
import warnings

import jax
import numpy as np
import pytest

import jaxmodels
from jaxmodels import convert, hf_io, hub, orbax_io, sharding
from tests.families import FAMILIES, NAMES
from tests.oracle import require_torch

SHA_MAIN, SHA_V1 = "a" * 40, "b" * 40


@functools.cache
def _model(name: str, seed: int = 0):
    """A family's tiny masked-LM head with random params (a jitted init: one compile per family)."""
    config = {**FAMILIES[name]["config"], "architectures": [FAMILIES[name]["mlm"]]}
    module = jaxmodels.from_config(config)
    return module, jax.jit(lambda key: jaxmodels.init_params(module, key))(jax.random.PRNGKey(seed))


def _equal(ours, theirs):
    a, b = hf_io.flatten(jax.device_get(ours)), hf_io.flatten(jax.device_get(theirs))
    assert list(a) == list(b)
    for path in a:
        np.testing.assert_array_equal(np.asarray(a[path]), np.asarray(b[path]), err_msg="/".join(path))


def _mesh():
    return jax.make_mesh((4, 2), ("fsdp", "tensor"))


# ------------------------------------------------------------------------------------------------------------
# Hub ids, offline, from a cache in huggingface_hub's layout
def _snapshot(cache, repo: str, sha: str, refs=(), files_from: str | None = None, files: dict | None = None) -> str:
    folder = os.path.join(cache, "models--" + repo.replace("/", "--"))
    snapshot = os.path.join(folder, "snapshots", sha)
    if files_from:
        shutil.copytree(files_from, snapshot)
    os.makedirs(snapshot, exist_ok=True)
    for name, text in (files or {}).items():
        with open(os.path.join(snapshot, name), "w") as f:
            f.write(text)
    os.makedirs(os.path.join(folder, "refs"), exist_ok=True)
    for ref in refs:
        with open(os.path.join(folder, "refs", ref), "w") as f:
            f.write(sha)
    return snapshot


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """``org/tiny``: two revisions (main -> params of seed 0, tag v1 -> seed 1), with a WordPiece tokenizer."""
    root = tmp_path_factory.mktemp("hub")
    cache = str(root / "cache")
    vocab = "\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "cat", "sat", "on", "mat", "##s"])
    tokenizer_files = {"vocab.txt": vocab, "tokenizer_config.json": '{"tokenizer_class": "BertTokenizer"}'}
    for seed, sha, ref in ((0, SHA_MAIN, "main"), (1, SHA_V1, "v1")):
        module, params = _model("albert", seed)
        jaxmodels.save_pretrained(module, params, str(root / f"seed{seed}"))
        _snapshot(cache, "org/tiny", sha, refs=[ref], files_from=str(root / f"seed{seed}"), files=tokenizer_files)
    return cache


def test_hub_id_resolves_revisions_offline(cache):
    load = functools.partial(jaxmodels.from_pretrained, cache_dir=cache, local_files_only=True)
    _equal(load("org/tiny")[1], _model("albert", 0)[1])
    _equal(load("org/tiny", revision="v1")[1], _model("albert", 1)[1])
    _equal(load("org/tiny", revision=SHA_V1)[1], _model("albert", 1)[1])


def test_hub_offline_environment_and_local_directory_wins(cache, tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # what HF_HUB_OFFLINE=1 sets when the library loads
    _equal(jaxmodels.from_pretrained("org/tiny", cache_dir=cache)[1], _model("albert", 0)[1])
    # A directory spelled like the id, under the working directory, is read instead of the cache.
    module, params = _model("albert", 1)
    jaxmodels.save_pretrained(module, params, str(tmp_path / "org" / "tiny"))
    monkeypatch.chdir(tmp_path)
    _equal(jaxmodels.from_pretrained("org/tiny", cache_dir=cache)[1], params)


def test_tokenizer_from_hub_id(cache):
    import transformers
    ours = jaxmodels.tokenizer_from_pretrained("org/tiny", cache_dir=cache, local_files_only=True)
    snapshot = os.path.join(cache, "models--org--tiny", "snapshots", SHA_MAIN)
    theirs = transformers.BertTokenizer.from_pretrained(snapshot)
    text = ["the cats sat on the mat", "a cat"]
    assert ours(text)["input_ids"] == theirs(text)["input_ids"]


def test_hub_errors_name_the_id_revision_and_file(cache, tmp_path):
    load = functools.partial(jaxmodels.from_pretrained, cache_dir=cache, local_files_only=True)
    with pytest.raises(ValueError, match=r"model id 'org/nope': not in the cache .*downloads are off"):
        load("org/nope")
    with pytest.raises(ValueError, match=r"model id 'org/tiny' \(revision 'v9'\): revision 'v9' is not in the cache"
                                         r" .*\(cached: main, v1, a+, b+\), and downloads are off"):
        load("org/tiny", revision="v9")
    with pytest.raises(ValueError, match=r"model id 'org/nope'"):
        jaxmodels.tokenizer_from_pretrained("org/nope", cache_dir=cache, local_files_only=True)
    with pytest.raises(ValueError, match=r"'not an id!' is neither a directory nor a Hugging Face Hub model id"):
        load("not an id!")
    with pytest.raises(ValueError, match=r"is not a directory"):
        load(str(tmp_path / "absent"))
    # A snapshot whose shard index names a file that is not there; one without weights.
    module, params = _model("albert")
    jaxmodels.save_pretrained(module, params, str(tmp_path / "sharded"), max_shard_size=2000)
    snapshot = _snapshot(cache, "org/broken", "c" * 40, refs=["main"], files_from=str(tmp_path / "sharded"))
    os.remove(os.path.join(snapshot, "model-00002-of-00008.safetensors"))
    for mesh in (None, _mesh()):
        with pytest.raises(ValueError, match=r"model id 'org/broken': .*models--org--broken.*"
                                             r"model-00002-of-00008\.safetensors: missing \(named by the checkpoint's "
                                             r"shard index\)"):
            load("org/broken", mesh=mesh)
    _snapshot(cache, "org/empty", "d" * 40, refs=["main"], files={"config.json": '{"model_type": "albert"}'})
    with pytest.raises(ValueError, match=r"model id 'org/empty': .* holds no model\.safetensors"):
        load("org/empty")


def test_hub_server_answers_are_named(monkeypatch):
    """What the Hub answers online (no such repository, no such revision) is named; the answers are simulated."""
    import huggingface_hub
    from huggingface_hub import errors as hub_errors

    for error, rule in ((hub_errors.RepositoryNotFoundError("404"), r"'org/x': no such repository on the Hub"),
                        (hub_errors.RevisionNotFoundError("404"), r"'org/x' \(revision 'r2'\): the revision does not "
                                                                  r"exist")):
        def refuse(*args, error=error, **kwargs):
            raise error

        monkeypatch.setattr(huggingface_hub, "snapshot_download", refuse)
        with pytest.raises(ValueError, match=rule):
            hub.resolve("org/x", revision="r2")


# ------------------------------------------------------------------------------------------------------------
# Sharded loading and sharded safetensors
@pytest.mark.parametrize("name", NAMES)
def test_sharded_load_equals_the_full_load(name, tmp_path):
    """Shards of at most 2 kB (several tensors split across files) read straight into a 4x2 fsdp x tensor mesh:
    every leaf equals the saved one and lies in the sharding the rules give it."""
    module, params = _model(name)
    path = str(tmp_path / "hf")
    jaxmodels.save_pretrained(module, params, path, max_shard_size="2kB")
    assert os.path.isfile(os.path.join(path, hf_io.SAFETENSORS_INDEX_NAME))
    assert len([f for f in os.listdir(path) if f.endswith(".safetensors")]) > 2
    _equal(jaxmodels.from_pretrained(path)[1], params)
    mesh = _mesh()
    _, sharded = jaxmodels.from_pretrained(path, mesh=mesh)
    _equal(sharded, params)
    want = sharding.param_shardings(jaxmodels.abstract_params(module, boxed=True), mesh)
    got = jax.tree.map(lambda x: x.sharding, sharded)
    assert jax.tree.leaves(got) == jax.tree.leaves(want)
    assert any(s.spec != jax.sharding.PartitionSpec() for s in jax.tree.leaves(got))  # some leaves are split


def test_sharded_safetensors_load_in_transformers_and_torch_bin_loads_sharded(tmp_path):
    """HF reads our shard index; a torch ``pytorch_model.bin`` (memory-mapped) loads sharded too; a missing head is
    freshly initialised on the mesh, with the warning naming it."""
    torch = require_torch()  # the [ref] oracle: CI installs it, so a missing one fails rather than skips
    import transformers
    module, params = _model("albert")
    path = str(tmp_path / "hf")
    jaxmodels.save_pretrained(module, params, path, max_shard_size=2000)
    model = transformers.AlbertForMaskedLM.from_pretrained(path)
    ours = jaxmodels.params_to_hf(module, params)
    for key, value in model.state_dict().items():
        if key in ours:
            np.testing.assert_array_equal(value.numpy(), ours[key], err_msg=key)
    model.save_pretrained(str(tmp_path / "bin"), safe_serialization=False)
    assert os.path.isfile(os.path.join(tmp_path, "bin", hf_io.TORCH_NAME))
    _equal(jaxmodels.from_pretrained(str(tmp_path / "bin"), mesh=_mesh())[1], params)
    with pytest.warns(UserWarning, match=r"newly initialised .*classifier\.weight"):
        head, loaded = jaxmodels.from_pretrained(str(tmp_path / "bin"), mesh=_mesh(),
                                                 architecture="AlbertForSequenceClassification")
    assert loaded["classifier"]["kernel"].sharding.mesh.shape == _mesh().shape
    _equal(loaded["albert"]["embeddings"], params["albert"]["embeddings"])
    del torch


def test_shard_size_argument_is_checked(tmp_path):
    module, params = _model("albert")
    for size, rule in ((0, r"must be positive"), ("5 parsecs", r"not a size such as '5GB'"), (1.5, r"expected bytes")):
        with pytest.raises(ValueError, match=rf"max_shard_size={size!r}: {rule}"):
            jaxmodels.save_pretrained(module, params, str(tmp_path / "x"), max_shard_size=size)


# ------------------------------------------------------------------------------------------------------------
# HF <-> Orbax
@pytest.mark.parametrize("name", NAMES)
def test_hf_orbax_hf_round_trip_loads_in_transformers_with_equal_outputs(name, tmp_path):
    torch = require_torch()  # the [ref] oracle: CI installs it, so a missing one fails rather than skips
    import transformers
    module, params = _model(name)
    source, orbax, back = (str(tmp_path / d) for d in ("hf", "orbax", "back"))
    jaxmodels.save_pretrained(module, params, source)
    assert convert.main(["--hf", source, "--orbax", orbax]) == 0
    assert orbax_io.is_params_directory(orbax)
    _equal(jaxmodels.from_pretrained(orbax, mesh=_mesh())[1], params)  # onto a mesh it was not written from
    assert convert.main(["--orbax", orbax, "--hf", back]) == 0
    cls = getattr(transformers, FAMILIES[name]["mlm"])
    ids = torch.tensor(np.random.default_rng(0).integers(5, 40, (2, 8)))
    with torch.no_grad():
        want = cls.from_pretrained(source).eval()(input_ids=ids).logits.numpy()
        got = cls.from_pretrained(back).eval()(input_ids=ids).logits.numpy()
    np.testing.assert_array_equal(got, want)


def test_realm_embedder_round_trips_through_orbax():
    """REALM's heads take candidates and blocks rather than one [batch, length] head, so it is not in FAMILIES: its
    embedder (the query/block tower every REALM class holds) goes HF -> Orbax -> HF with equal HF outputs."""
    torch = require_torch()  # the [ref] oracle: CI installs it, so a missing one fails rather than skips
    import transformers
    config = dict(model_type="realm", vocab_size=40, hidden_size=8, retriever_proj_size=4, num_hidden_layers=1,
                  num_attention_heads=2, intermediate_size=12, max_position_embeddings=16,
                  architectures=["RealmEmbedder"])
    module = jaxmodels.from_config(config)
    params = jax.jit(lambda key: jaxmodels.init_params(module, key))(jax.random.PRNGKey(1))
    with tempfile.TemporaryDirectory() as tmp:
        source, orbax, back = (os.path.join(tmp, d) for d in ("hf", "orbax", "back"))
        jaxmodels.save_pretrained(module, params, source)
        assert convert.main(["--hf", source, "--orbax", orbax]) == 0
        _equal(jaxmodels.from_pretrained(orbax)[1], params)
        assert convert.main(["--orbax", orbax, "--hf", back]) == 0
        ids = torch.tensor(np.random.default_rng(0).integers(5, 40, (2, 8)))
        with torch.no_grad():
            want = transformers.RealmEmbedder.from_pretrained(source).eval()(input_ids=ids).projected_score
            got = transformers.RealmEmbedder.from_pretrained(back).eval()(input_ids=ids).projected_score
    assert float(want.abs().sum()) > 0
    np.testing.assert_array_equal(got.numpy(), want.numpy())


def test_conversion_refuses_a_non_empty_target_and_leaves_nothing_half_written(tmp_path, capsys, monkeypatch):
    module, params = _model("albert")
    source, target = str(tmp_path / "hf"), str(tmp_path / "out")
    jaxmodels.save_pretrained(module, params, source)
    os.makedirs(target)
    open(os.path.join(target, "keep.txt"), "w").close()
    assert convert.main(["--hf", source, "--orbax", target, "--to", "orbax"]) == 2
    assert "exists and is not an empty directory" in capsys.readouterr().err
    assert os.listdir(target) == ["keep.txt"]
    assert convert.main(["--hf", "org/absent", "--orbax", str(tmp_path / "new"), "--local-files-only"]) == 2
    assert "model id 'org/absent'" in capsys.readouterr().err

    def fail(*args, **kwargs):
        raise OSError(28, "No space left on device")

    import orbax.checkpoint as ocp

    monkeypatch.setattr(ocp.PyTreeCheckpointer, "save", fail)
    with pytest.raises(OSError, match="No space left"):
        jaxmodels.save_orbax(module, params, str(tmp_path / "failed"))
    assert sorted(os.listdir(tmp_path)) == ["hf", "out"]  # neither the target nor a temporary directory


def test_orbax_errors_name_the_file(tmp_path):
    module, params = _model("albert")
    jaxmodels.save_orbax(module, params, str(tmp_path / "ok"))
    other = jaxmodels.from_config({**FAMILIES["albert"]["config"], "hidden_size": 32,
                                   "architectures": [FAMILIES["albert"]["mlm"]]})
    shutil.copytree(tmp_path / "ok", tmp_path / "bad")
    with open(tmp_path / "bad" / "config.json", "w") as f:
        f.write(__import__("json").dumps(other.config.to_hf_dict() | {"architectures": ["AlbertForMaskedLM"]}))
    with pytest.raises(ValueError, match=r"bad/params: params/albert/.* has shape .* which does not fit"):
        jaxmodels.from_pretrained(str(tmp_path / "bad"))
    shutil.rmtree(tmp_path / "ok" / "params" / "d")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(ValueError, match=r"ok/params: .*"):
            jaxmodels.from_pretrained(str(tmp_path / "ok"))
