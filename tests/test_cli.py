"""The CLI through click's CliRunner: exact exit codes and one-line messages."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
from click.testing import CliRunner

from kmodel.cli import cli

from .conftest import make_input


def invoke(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, list(args))
    return result.exit_code, result.stdout, result.stderr


def test_validate_all_good(project: Path) -> None:
    code, out, _ = invoke("validate")
    assert code == 0
    assert "ok    model_specs/toy/model.yaml" in out and "ok    envs/numpy2.yaml" in out


def test_validate_reports_bad_spec_in_one_line(project: Path) -> None:
    spec = project / "model_specs" / "toy" / "model.yaml"
    spec.write_text(spec.read_text().replace("dtype: float32\n    shape: [3]",
                                             "dtype: float33\n    shape: [3]"))
    code, _, err = invoke("validate", str(spec))
    assert code == 1
    assert err.startswith(f"Error [KM101]: {spec}:10: inputs.0.dtype: Input should be ")
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_validate_without_paths_includes_the_compositions_in_workflows(project: Path) -> None:
    (project / "workflows").mkdir()
    (project / "workflows" / "mine.yaml").write_text("name: mine\nmodels: [toy]\n")
    code, out, err = invoke("validate")
    assert code == 1 and "ok    model_specs/toy/model.yaml" in out
    assert err.startswith("Error [KM101]: workflows/mine.yaml:1: "), err


def test_validate_reports_every_problem_of_a_file_at_once(project: Path) -> None:
    spec = project / "model_specs" / "toy" / "model.yaml"
    text = spec.read_text().replace("dtype: float32\n    shape: [3]",
                                    "dtype: float33\n    shape: [-3]")
    spec.write_text(text.replace("name: toy", "name: toy\ncolour: red"))
    code, _, err = invoke("validate", str(spec))
    lines = err.strip().splitlines()
    assert code == 1 and len(lines) == 3, err
    assert lines[0].startswith(f"Error [KM101]: {spec}:") and "(and 2 more below)" in lines[0]
    assert all(line.startswith(f"  also: {spec}:") for line in lines[1:])
    assert any("colour: unknown key" in ln for ln in lines)
    assert any("inputs.0.shape.0: Input should be greater than or equal to 1" in ln
               for ln in lines)
    code, _, err = invoke("info", "toy")  # other commands: the first, and how to see all
    assert code == 1 and len(err.strip().splitlines()) == 1
    assert err.strip().endswith("(and 2 more: `kmodel validate model_specs/toy/model.yaml` "
                                "lists them)"), err


def test_validate_json(project: Path) -> None:
    (project / "envs" / "bad.yaml").write_text("python: 3.11\n")
    code, out, _ = invoke("validate", "--json")
    assert code == 1
    rows = {r["path"]: r for r in json.loads(out)}
    assert rows["envs/bad.yaml"]["code"] == "KM101" and rows["envs/numpy2.yaml"]["ok"]


def test_ls_and_info_json(project: Path) -> None:
    code, out, _ = invoke("ls", "--json")
    assert code == 0
    assert {m["name"] for m in json.loads(out)} == {"logreg", "gnb", "mlp", "stacker", "toy"}
    code, out, _ = invoke("info", "toy", "--json")
    info = json.loads(out)
    assert code == 0 and info["env"] == "numpy2" and info["lockfile"] == "envs/numpy2.lock"
    assert [o["name"] for o in info["outputs"]] == ["y", "norm"]
    assert set(info["weights"]["sha256"]) == {"params.json", "scale-w-0.npy"}


def test_global_options_after_the_subcommand(project: Path, tmp_path: Path) -> None:
    extra = tmp_path / "more"
    toy = project / "model_specs" / "toy"
    shutil.copytree(toy, extra / "other")
    (extra / "other" / "model.yaml").write_text(
        (toy / "model.yaml").read_text().replace("name: toy", "name: other"))
    before = invoke("--specs", str(extra), "ls", "--json")
    after = invoke("ls", "--json", "--specs", str(extra))
    assert before == after and after[0] == 0
    assert "other" in {m["name"] for m in json.loads(after[1])}
    code, _, err = invoke("info", "toy", "--envs", str(tmp_path / "no-envs"))
    assert code == 1 and err.startswith("Error [KM111]: "), err  # the env is looked up there
    code, _, err = invoke("info", "nope", "-v")
    assert code == 1 and "Traceback" in err  # -v after the subcommand: the full traceback


def test_ls_lists_the_good_specs_and_reports_a_broken_one(project: Path) -> None:
    (project / "model_specs" / "gnb" / "model.yaml").write_text("name: [\n")
    code, out, err = invoke("ls")
    assert code == 1
    assert [line.split()[0] for line in out.splitlines()] == ["logreg", "mlp", "stacker", "toy"]
    assert err.startswith("Error [KM100]: model_specs/gnb/model.yaml:2: invalid YAML"), err
    assert len(err.strip().splitlines()) == 1


def test_unknown_model(project: Path) -> None:
    code, _, err = invoke("info", "nope")
    assert code == 1
    assert err.startswith("Error [KM110]: unknown model 'nope' (searched model_specs); "
                          "known models: gnb, logreg, mlp, stacker, toy")


def test_usage_error_exit_2(project: Path) -> None:
    code, _, err = invoke("env", "lock")
    assert code == 2 and "Error [KM002]: give env or model names, or --all" in err
    code, _, _ = invoke("predict", "toy")
    assert code == 2  # click's own usage errors: missing -i/-o


def test_missing_input(project: Path) -> None:
    code, _, err = invoke("predict", "toy", "-i", "missing.h5", "-o", "o.h5")
    assert (code, err) == (1, "Error [KM400]: input file missing.h5 does not exist; "
                              "check the path\n")
    assert not Path("o.h5").exists()


def test_hash_check_and_write(project: Path) -> None:
    assert invoke("hash", "toy")[0] == 0
    np.save(project / "model_specs/toy/weights/scale-w-0.npy", np.ones(3))
    code, out, err = invoke("hash", "toy")
    assert code == 1 and "CHANGED   scale-w-0.npy" in out and "kmodel hash toy --write" in err
    assert invoke("hash", "toy", "--write")[0] == 0
    assert invoke("hash", "toy")[0] == 0


@pytest.mark.slow
def test_predict_and_verbose_traceback(project: Path) -> None:
    make_input(project / "in.h5", rows=10)
    code, out, _ = invoke("predict", "toy", "-i", "in.h5", "-o", "o.h5")
    assert code == 0 and out.startswith("wrote o.h5")
    spec = project / "model_specs/toy/model.yaml"
    spec.write_text(spec.read_text().replace("factor: 2.0", "factor: 2.0\n  fail_at: 0"))
    code, _, err = invoke("predict", "toy", "-i", "in.h5", "-o", "o2.h5")
    assert code == 1 and "Traceback" not in err
    assert err.strip().endswith("model 'toy' raised ValueError: toy failure at row 10; run with "
                                "-v for its traceback")
    code, _, err = invoke("-v", "predict", "toy", "-i", "in.h5", "-o", "o2.h5")
    assert code == 1 and "Traceback (most recent call last)" in err and "in predict" in err
    assert not Path("o2.h5").exists()


@pytest.mark.slow
def test_env_commands(project: Path) -> None:
    code, out, _ = invoke("env", "create", "toy")
    assert code == 0 and out.startswith("numpy2: ")
    code, out, _ = invoke("env", "path", "toy")
    assert code == 0 and Path(out.strip(), "bin", "python").exists()
    code, out, _ = invoke("env", "status", "--json")
    rows = {r["env"]: r for r in json.loads(out)}
    assert rows["numpy2"]["built"] and rows["numpy2"]["locked"] and not rows["numpy2"]["drift"]
    (project / "envs/numpy2.yaml").write_text('python: "3.11"\npip: [numpy>=2.3]\n')
    code, out, _ = invoke("env", "status")
    assert code == 1 and "numpy2               uv     spec changed since lock" in out


def test_shell_completion_offers_model_and_env_names(project: Path) -> None:
    def complete(words: str) -> list[str]:
        env = {**os.environ, "COMP_WORDS": words, "COMP_CWORD": str(len(words.split()) - 1),
               "_KMODEL_COMPLETE": "bash_complete"}
        out = subprocess.run([sys.executable, "-c", "from kmodel.cli import main; main()"],
                             env=env, capture_output=True, text=True).stdout
        return [line.split(",", 1)[1] for line in out.splitlines() if "," in line]

    assert complete("kmodel predict t") == ["toy"]
    assert complete("kmodel env create n") == ["numpy2"]
    assert complete("kmodel info zz") == []


@pytest.mark.slow  # builds the example models' envs
def test_the_readmes_python_api_example_runs(tmp_path: Path, kmodel_home: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """The README's example, as written, in a copy of the repo's folders."""
    repo = Path(__file__).resolve().parents[1]
    for name in ("envs", "model_specs", "workflows"):
        shutil.copytree(repo / name, tmp_path / name,
                        ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("KMODEL_PATH", raising=False)
    readme = (repo / "README.md").read_text()
    section = readme[readme.index("## Python API"):readme.index("## Spec formats")]
    code = re.search(r"```python\n(.*?)```", section, re.S)
    assert code is not None
    exec(compile(code.group(1), "README.md", "exec"), {})
    with h5py.File(tmp_path / "ens.h5") as f:
        assert f["preds/pred"].shape == (86,) and f.attrs["model"] == "stacker"


def test_init_refuses_what_it_cannot_write_well(project: Path) -> None:
    code, _, err = invoke("init", "new", "--env", "nope")
    assert code == 1 and err.startswith("Error [KM111]: unknown env 'nope'") \
        and "--new-env" in err
    code, _, err = invoke("init", "bad name", "--env", "numpy2")
    assert code == 1 and err.startswith("Error [KM101]: kmodel init: NAME: 'bad name' is not")
    code, _, err = invoke("init", "new", "--env", "numpy2", "--inputs", "x:float33:3")
    assert code == 1 and "dtypes: float16" in err
    code, _, err = invoke("init", "new", "--env", "numpy2", "--new-env")
    assert code == 1 and err.startswith("Error [KM402]: cannot write output envs/numpy2.yaml")
    assert not (project / "model_specs" / "new").exists()  # refused before writing anything
    code, out, _ = invoke("init", "new", "--env", "fresh", "--new-env")
    assert code == 0 and "kmodel env lock fresh" in out
    code, out, _ = invoke("validate", "model_specs/new", "envs/fresh.yaml")
    assert code == 0, out


def test_the_api_checks_its_arguments_and_keeps_its_names(project: Path) -> None:
    import kmodel
    from kmodel.errors import KmodelError, UsageError

    mlp = kmodel.get_model("mlp")
    for bad in ([[1.0, 2.0]], None, np.array([], dtype=np.float32), np.array(["a"])):
        with pytest.raises(UsageError, match="predict"):
            mlp.predict(bad)  # type: ignore[arg-type]
    with pytest.raises(UsageError, match="preds is a non-empty list of files"):
        kmodel.compose_train("stacker", [], "t.h5", "w")
    with pytest.raises(UsageError, match=r"non-empty list of files, not 'x\.h5'"):
        kmodel.stacked_input("x.h5", "y.h5")  # type: ignore[arg-type]
    with pytest.raises(UsageError, match="test_fraction"):
        kmodel.example_data("a.h5", "b.h5", test_fraction=float("nan"))
    with pytest.raises(KmodelError, match="not a weights folder kmodel trained"):
        mlp.predict_file("in.h5", "o.h5", weights=project / "nowhere")
    (project / "workflows").mkdir()
    (project / "workflows" / "c.yaml").write_text(
        "name: c\nresults: out\ndata: {builtin: breast_cancer}\nmodels: [mlp]\n"
        "ensembler: stacker\n")
    first = kmodel.status_of("workflows/c.yaml")
    again = kmodel.status_of("workflows/c.yaml")  # the submodule kmodel.status is not it
    assert [e.state for e in first] == [e.state for e in again] and first[0].missing
    code, _, err = invoke("init", "envs", "--env", "numpy2")
    assert code == 1 and "not 'envs'" in err


def test_validate_reports_schema_name_entry_file_and_env_problems_together(
        project: Path) -> None:
    folder = project / "model_specs" / "bad"
    folder.mkdir()
    (folder / "model.yaml").write_text(
        "name: other\nversion: 1\nenv: nope\nentrypoint: missing.py:build\n"
        "inputs:\n  - {name: x, dtype: float32, shape: [3]}\n"
        "outputs:\n  - {name: y, dtype: float32, shape: []}\n")
    code, _, err = invoke("validate", str(folder))
    lines = err.strip().splitlines()
    assert code == 1 and lines[0].startswith("Error [KM101]: ") and "(and 3 more below)" \
        in lines[0], err
    text = "\n".join(lines)
    for part in ("version: Input should be a valid string", "name 'other' differs from its "
                 "folder 'bad'", "missing.py does not exist", "unknown env 'nope'"):
        assert part in text, (part, err)
    assert [ln.startswith("Error [") for ln in lines].count(True) == 1


def test_env_folders_are_a_path_list(project: Path, tmp_path: Path,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """--envs and KMODEL_ENVS take several folders, like KMODEL_PATH: the first folder that
    holds NAME.yaml wins, and every folder's envs are found."""
    shared = tmp_path / "shared"
    shared.mkdir()
    own = (project / "envs" / "numpy2.yaml").read_text()
    (shared / "extra.yaml").write_text(own)
    (shared / "numpy2.yaml").write_text(own.replace("numpy 2.x only", "the shared one"))
    for args, var in (([], f"envs{os.pathsep}{shared}"),
                      (["--envs", "envs", "--envs", str(shared)], None),
                      (["--envs", f"envs{os.pathsep}{shared}"], None)):
        if var is None:
            monkeypatch.delenv("KMODEL_ENVS", raising=False)
        else:
            monkeypatch.setenv("KMODEL_ENVS", var)
        code, out, err = invoke(*args, "validate")
        assert code == 0, err
        assert "ok    envs/numpy2.yaml" in out and f"ok    {shared / 'extra.yaml'}" in out
        assert str(shared / "numpy2.yaml") not in out  # hidden by the first folder's
    code, out, _ = invoke("--envs", f"{shared}{os.pathsep}envs", "validate")
    assert code == 0 and f"ok    {shared / 'numpy2.yaml'}" in out and "envs/numpy2.yaml" not in out
    code, _, err = invoke("--envs", f"{tmp_path / 'a'}{os.pathsep}{tmp_path / 'b'}", "info", "toy")
    assert code == 1 and err.startswith("Error [KM111]: ")
    assert f"no numpy2.yaml in {tmp_path / 'a'}, {tmp_path / 'b'}" in err
