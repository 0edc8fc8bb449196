"""Spec loading: good specs load; bad ones name file, line, field and a fix."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kmodel.errors import KmodelError, SpecError, UnsafePathError, YamlSyntaxError
from kmodel.registry import Registry
from kmodel.spec import (
    CondaEnvSpec,
    PipEnvSpec,
    load_compose_config,
    load_env_spec,
    load_model_spec,
)

from .conftest import REPO, TOY_SPEC


def write(tmp_path: Path, text: str, name: str = "model.yaml") -> Path:
    folder = tmp_path / "toy"
    folder.mkdir(exist_ok=True)
    (folder / "model.py").write_text("def build():\n    pass\n")
    path = folder / name
    path.write_text(text)
    return path


@pytest.mark.parametrize("name", ["logreg", "gnb", "mlp", "stacker"])
def test_repo_specs_load(name: str) -> None:
    spec = load_model_spec(REPO / "model_specs" / name / "model.yaml")
    assert spec.name == name and spec.entrypoint == "model.py:build"


def test_repo_envs_are_pip_envs_that_clash() -> None:
    legacy = load_env_spec(REPO / "envs" / "sklearn-legacy.yaml")
    new = load_env_spec(REPO / "envs" / "numpy2.yaml")
    assert isinstance(legacy, PipEnvSpec) and isinstance(new, PipEnvSpec)
    assert "numpy==1.26.*" in legacy.pip and "numpy>=2.2" in new.pip


def test_conda_env_spec_is_recognised(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("channels: [conda-forge]\ndependencies:\n  - python=3.11\n"
                    "  - pip:\n    - h5py\n")
    spec = load_env_spec(path)
    assert isinstance(spec, CondaEnvSpec)
    assert spec.conda_deps == ["python=3.11"] and spec.pip_deps == ["h5py"]


def test_unknown_key_names_file_line_and_field(tmp_path: Path) -> None:
    path = write(tmp_path, TOY_SPEC.replace("version: 0.1.0", "version: 0.1.0\nvesion: 2"))
    with pytest.raises(SpecError) as err:
        load_model_spec(path)
    assert str(err.value).startswith(f"{path}:3: vesion: unknown key; remove it")


def test_wrong_type_in_nested_field(tmp_path: Path) -> None:
    path = write(tmp_path, TOY_SPEC.replace("shape: [3]", "shape: three"))
    with pytest.raises(SpecError) as err:
        load_model_spec(path)
    assert f"{path}:11: inputs.0.shape:" in str(err.value)
    assert "write a list" in str(err.value)


def test_missing_field(tmp_path: Path) -> None:
    path = write(tmp_path, TOY_SPEC.replace("env: numpy2\n", ""))
    with pytest.raises(SpecError, match=r"env: Field required; add it"):
        load_model_spec(path)


def test_malformed_yaml_reports_line(tmp_path: Path) -> None:
    path = write(tmp_path, "name: toy\nargs: {a: 1\nversion: 1\n")
    with pytest.raises(YamlSyntaxError) as err:
        load_model_spec(path)
    assert err.value.code == "KM100" and err.value.line == 3


def test_yaml_tags_are_not_executed(tmp_path: Path) -> None:
    path = write(tmp_path, "!!python/object/apply:os.system ['echo hacked']\n")
    with pytest.raises(YamlSyntaxError):
        load_model_spec(path)


@pytest.mark.parametrize("entry", ["/etc/passwd.py:build", "../evil.py:build"])
def test_entrypoint_must_stay_inside(tmp_path: Path, entry: str) -> None:
    path = write(tmp_path, TOY_SPEC.replace("model.py:build", entry))
    with pytest.raises(UnsafePathError, match="entrypoint"):
        load_model_spec(path)


def test_symlink_escaping_the_model_folder(tmp_path: Path) -> None:
    (tmp_path / "outside.py").write_text("def build():\n    pass\n")
    path = write(tmp_path, TOY_SPEC.replace("model.py:build", "link.py:build"))
    (path.parent / "link.py").symlink_to(tmp_path / "outside.py")
    with pytest.raises(UnsafePathError, match="symlink"):
        load_model_spec(path)


def test_env_name_cannot_escape_envs(tmp_path: Path) -> None:
    reg = Registry(envs_dir=tmp_path)
    with pytest.raises(KmodelError) as err:
        reg.env("../etc/passwd")
    assert err.value.code == "KM111"


def test_compose_config_needs_a_data_source(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("name: c\ndata: {seed: 1}\nmodels: [a]\nensembler: b\n")
    with pytest.raises(SpecError, match="give either builtin"):
        load_compose_config(path)


def test_demo_config_loads() -> None:
    cfg = load_compose_config(REPO / "workflows" / "demo.yaml")
    assert cfg.models == ["logreg", "gnb", "mlp"] and cfg.ensembler == "stacker"


yamlish = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
        st.sampled_from(["name", "version", "env", "entrypoint", "inputs", "outputs", "args",
                         "weights", "shape", "dtype", "x", "pip", "python"]), inner, max_size=4),
    max_leaves=12)


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(doc=yamlish, raw=st.text(max_size=40))
def test_loader_never_raises_anything_but_spec_errors(tmp_path: Path, doc: object,
                                                      raw: str) -> None:
    import yaml

    for text in (yaml.safe_dump(doc), raw):
        path = write(tmp_path, text)
        for load in (load_model_spec, load_env_spec, load_compose_config):
            try:
                load(path)
            except SpecError as e:
                assert str(e).startswith(str(path))
