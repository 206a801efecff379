"""The workdir's units of work (skip, or compute, commit atomically and read back) and the
fingerprint that refuses a rerun of another configuration."""

import json

import pytest

from rest_em import errors, fingerprint
from rest_em import workdir as workdir_lib


def test_unit_computes_once_then_reads_back(tmp_path):
    calls = []

    def compute():
        calls.append(1)
        return {"a": (1, 2)}

    path = tmp_path / "sub" / "u.json"
    first = workdir_lib.unit(path, compute)
    again = workdir_lib.unit(path, compute)
    # Read back even the first time: a tuple comes back as the list a resumed run sees.
    assert first == again == {"a": [1, 2]} and len(calls) == 1
    assert not list(path.parent.glob(".*tmp*")), "the temp file is renamed into place"


def test_unit_leaves_no_file_when_compute_fails(tmp_path):
    path = tmp_path / "u.jsonl"

    def fail():
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        workdir_lib.unit(path, fail, workdir_lib.JSONL)
    assert not path.exists()
    assert workdir_lib.unit(path, lambda: [{"x": 1}], workdir_lib.JSONL) == [{"x": 1}]


def test_paths_name_every_file_of_an_iteration(tmp_path):
    it = workdir_lib.RunPaths(tmp_path).iteration(3)
    assert it.dir.name == "iter_003" and it.number == 3
    assert it.eval("test").name == "eval_test.json"
    assert workdir_lib.shard(it.samples, 2).name == "shard_00002.jsonl"
    assert {it.marker.name, it.mstep.name, it.selected.name} == {
        "metrics.json",
        "mstep.json",
        "selected.jsonl",
    }


FP = {
    "config.rest_em.EMConfig.num_samples": "16",
    "config.rest_em.EMConfig.num_iterations": "3",
    "config.rest_em.EMConfig.eval_splits": "('test',)",
    "data.test": "aa",
}


def test_differences_separate_extensions_from_changes():
    new = dict(FP)
    new["config.rest_em.EMConfig.num_iterations"] = "5"
    new["config.rest_em.EMConfig.eval_splits"] = "('test', 'transfer')"
    new["data.transfer"] = "bb"
    changes, extensions = fingerprint.differences(FP, new)
    assert changes == [] and len(extensions) == 3
    new["config.rest_em.EMConfig.num_samples"] = "32"
    new["config.rest_em.EMConfig.num_iterations"] = "2"  # fewer: not an extension
    changes, _ = fingerprint.differences(FP, new)
    assert changes == [
        'config.rest_em.EMConfig.num_iterations: "3" -> "2"',
        'config.rest_em.EMConfig.num_samples: "16" -> "32"',
    ]


def test_a_model_field_added_later_at_its_default_is_no_change():
    """A workdir written before ModelConfig gained a field still resumes when the field is
    at its default; the field set to anything else is a change."""
    new = {**FP, "model.sandwich_norms": False, "model.hidden_act": "silu"}
    new["teacher.model.attn_softcap"] = None
    assert fingerprint.differences(FP, new) == ([], [])
    new["model.hidden_act"] = "gelu_tanh"
    assert fingerprint.differences(FP, new)[0] == ['model.hidden_act: (unset) -> "gelu_tanh"']


def test_check_refuses_a_changed_value_and_writes_nothing(tmp_path):
    paths = workdir_lib.RunPaths(tmp_path)
    fingerprint.check(paths, FP)
    before = paths.fingerprint.read_bytes()
    changed = {**FP, "data.test": "cc"}
    with pytest.raises(errors.WorkdirConflict, match='data.test: "aa" -> "cc"'):
        fingerprint.check(paths, changed)
    assert paths.fingerprint.read_bytes() == before
    assert not paths.fingerprint_history.exists()


def test_check_continue_records_the_change(tmp_path):
    paths = workdir_lib.RunPaths(tmp_path)
    fingerprint.check(paths, FP)
    fingerprint.check(paths, FP)  # the same config: nothing recorded
    assert not paths.fingerprint_history.exists()
    changed = {**FP, "config.rest_em.EMConfig.num_samples": "8"}
    fingerprint.check(paths, changed, on_config_change="continue")
    (entry,) = [json.loads(x) for x in paths.fingerprint_history.read_text().splitlines()]
    assert entry["changes"] == ['config.rest_em.EMConfig.num_samples: "16" -> "8"']
    assert json.loads(paths.fingerprint.read_text())["fingerprint"] == changed
    fingerprint.check(paths, changed)  # the new config is now the workdir's


def test_check_refuses_an_old_workdir_without_fingerprint(tmp_path):
    (tmp_path / "iter_000").mkdir()
    paths = workdir_lib.RunPaths(tmp_path)
    with pytest.raises(errors.WorkdirConflict, match="no fingerprint.json"):
        fingerprint.check(paths, FP)
    assert not paths.fingerprint.exists()
    fingerprint.check(paths, FP, on_config_change="continue")
    assert paths.fingerprint.exists() and paths.fingerprint_history.exists()


def test_gin_bindings_name_each_binding():
    text = "rest_em.EMConfig.num_samples = 4\nmstep/rest_em.FitConfig.num_steps = 8\n"
    out = fingerprint.gin_bindings(text)
    assert out == {
        "config.rest_em.EMConfig.num_samples": "4",
        "config.mstep/rest_em.FitConfig.num_steps": "8",
    }
