"""Spec loading: good specs load; bad ones name file, line, field and a fix."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kmodel.errors import KmodelError, SpecError, UnsafePathError, YamlSyntaxError
from kmodel.loader import load_compose_config, load_env_spec, load_model_spec
from kmodel.registry import Registry
from kmodel.spec import CondaEnvSpec, PipEnvSpec

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
    reg = Registry(envs=[tmp_path])
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



@pytest.mark.parametrize("name", ["ArraySpec", "WeightsSpec", "TrainSpec", "TestSpec",
                                  "ResourcesSpec", "ModelSpec", "PipEnvSpec", "CondaEnvSpec",
                                  "DataConfig", "StackingConfig", "ComposeConfig"])
def test_types_mirror_their_validators(name: str) -> None:
    """kmodel/spec.py's dataclasses and kmodel/_schema.py's pydantic models have the same
    fields with the same defaults: what validates is what the rest of kmodel reads."""
    import dataclasses

    from kmodel import _schema, spec

    kind, schema = getattr(spec, name), getattr(_schema, name).model_fields
    fields = {f.name: f for f in dataclasses.fields(kind)}
    assert set(fields) == set(schema)
    for key, f in fields.items():
        default = (f.default_factory() if f.default_factory is not dataclasses.MISSING
                   else f.default)
        want = schema[key].get_default(call_default_factory=True)
        if hasattr(want, "model_dump"):  # a nested document: compare its fields
            default, want = dataclasses.asdict(default), want.model_dump()
        assert (default is dataclasses.MISSING) == schema[key].is_required(), key
        assert default is dataclasses.MISSING or default == want, key


def test_a_spec_seen_before_loads_without_pydantic_or_yaml(tmp_path: Path) -> None:
    import subprocess
    import sys

    path = write(tmp_path, f"# {tmp_path}: content no test has cached\n{TOY_SPEC}")
    probe = ("import sys; from pathlib import Path; from kmodel.loader import load_model_spec; "
             f"s = load_model_spec(Path({str(path)!r})); "
             "print(s.name, s.inputs[0].shape, 'pydantic' in sys.modules, 'yaml' in sys.modules)")
    runs = [subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                           check=True).stdout.split() for _ in range(2)]
    assert runs[0][2:] == ["True", "True"]  # validated the first time
    assert runs[1][2:] == ["False", "False"]  # then read from the cache
    assert runs[0][:2] == runs[1][:2]


def test_the_cache_follows_the_content_not_the_file(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """A spec rewritten with the same size at once (same mtime tick) is validated anew,
    and a damaged cache entry is not trusted."""
    from kmodel._fs import kmodel_home

    monkeypatch.setenv("KMODEL_HOME", str(tmp_path / "home"))  # entries of its own to damage
    path = write(tmp_path, TOY_SPEC)
    good = load_model_spec(path)
    path.write_text(TOY_SPEC.replace("version:", "versio_:", 1))
    with pytest.raises(SpecError, match="version: Field required"):
        load_model_spec(path)
    path.write_text(TOY_SPEC)
    for entry in (kmodel_home() / "spec-cache").glob("*.json"):
        entry.write_text('{"name": 3}')
    assert load_model_spec(path) == good


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


@pytest.mark.parametrize("name", ["sub/x.npy", "sub\\x.safetensors", "../other/w.npy"])
def test_weight_files_lie_in_the_weights_folder_itself(tmp_path: Path, name: str) -> None:
    digest = "ab" * 32
    path = write(tmp_path, TOY_SPEC + f"weights:\n  path: weights\n  sha256:\n    params.json: "
                 f"{digest}\n    '{name}': {digest}\n")
    with pytest.raises(SpecError, match="no subfolders"):
        load_model_spec(path)
