"""Native weight files, safely: the formats kmodel takes (told by name, checked by content),
pickles refused wherever they would enter, and weights that must reproduce the trained
model.

The first tests read bytes made here (no env). The rest train and predict real models in
ONE real uv env (numpy, h5py, safetensors, ml_dtypes, onnx, onnxruntime, lightgbm), locked
once per module and built once per session.
"""

from __future__ import annotations

import json
import pickle
import struct
import subprocess
import sys
import zipfile
from pathlib import Path

import h5py
import numpy as np
import pytest

from kmodel import weight_formats
from kmodel.errors import WeightFormatError

from .conftest import make_input

KMODEL = [sys.executable, "-m", "kmodel"]


# --- formats by name and by content (no env) ------------------------------------------


def _safetensors_bytes(tensors: dict[str, np.ndarray]) -> bytes:
    header: dict[str, object] = {}
    data, offset = b"", 0
    for name, arr in tensors.items():
        raw = np.ascontiguousarray(arr).tobytes()
        header[name] = {"dtype": "F32", "shape": list(arr.shape),
                        "data_offsets": [offset, offset + len(raw)]}
        data, offset = data + raw, offset + len(raw)
    text = json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text + data


def test_every_format_kmodel_takes_passes_by_name_and_content(tmp_path: Path) -> None:
    np.save(tmp_path / "w.npy", np.arange(3.0))
    (tmp_path / "t.safetensors").write_bytes(
        _safetensors_bytes({"a/b.c": np.ones(2, np.float32)}))
    (tmp_path / "m.onnx").write_bytes(b"\x08\x09\x12\x04test")  # ir_version 9, producer
    (tmp_path / "b.json").write_text('{"learner": {}}')
    (tmp_path / "b.ubj").write_bytes(b"{L\x00\x00\x00\x00\x00\x00\x00\x07learner{}}")
    (tmp_path / "model.txt").write_text("tree\nversion=v4\n")
    with zipfile.ZipFile(tmp_path / "m.keras", "w") as z:
        z.writestr("config.json", "{}")
        z.writestr("metadata.json", "{}")
    with h5py.File(tmp_path / "m.weights.h5", "w") as f:
        f["x"] = np.ones(2)
    (tmp_path / "params.json").write_text("{}")
    weight_formats.check_folder(tmp_path)
    assert weight_formats.format_of("m.weights.h5") == "keras"
    assert weight_formats.names_in(tmp_path) == [
        "b.json", "b.ubj", "m.keras", "m.onnx", "m.weights.h5", "model.txt", "a/b.c", "w"]


@pytest.mark.parametrize(("name", "advice"), [
    ("model.pt", "safetensors"), ("model.pth", "onnx"), ("est.joblib", "onnx"),
    ("est.pkl", "get_weights"), ("x.pickle", "get_weights"), ("ckpt.ckpt", "safetensors"),
    ("arrays.npz", ".npy"), ("m.h5", ".weights.h5"), ("weird.xyz", "no weight format")])
def test_a_pickle_or_unknown_suffix_is_refused_with_the_format_to_use(
        tmp_path: Path, name: str, advice: str) -> None:
    path = tmp_path / name
    path.write_bytes(pickle.dumps({"w": [1.0]}))
    with pytest.raises(WeightFormatError) as e:
        weight_formats.check_file(path, "m")
    text = str(e.value)
    assert e.value.code == "KM305" and str(path) in text and advice in text, text
    assert "\n" not in text


@pytest.mark.parametrize("name", ["w.npy", "w.safetensors", "m.onnx", "b.json", "b.ubj",
                                  "model.txt", "m.keras", "m.weights.h5"])
@pytest.mark.parametrize("protocol", [0, 1, 2, 5])
def test_a_pickle_renamed_to_any_native_suffix_is_refused(tmp_path: Path, name: str,
                                                          protocol: int) -> None:
    path = tmp_path / name
    path.write_bytes(pickle.dumps({"w": np.arange(3.0)}, protocol=protocol))
    why = weight_formats.problem(path)
    assert why is not None and ("pickle" in why or "not" in why), why


def test_a_torch_save_zip_named_keras_and_an_object_npy_are_refused(tmp_path: Path) -> None:
    with zipfile.ZipFile(tmp_path / "m.keras", "w") as z:  # what torch.save writes
        z.writestr("config.json", "{}")
        z.writestr("archive/data.pkl", pickle.dumps({"w": 1}))
        z.writestr("archive/version", "3")
    assert "archive/data.pkl" in (weight_formats.problem(tmp_path / "m.keras") or "")
    np.save(tmp_path / "o.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    assert "Python objects" in (weight_formats.problem(tmp_path / "o.npy") or "")
    np.save(tmp_path / "s.npy", np.zeros(2, dtype=[("a", "f4"), ("b", "O")]),
            allow_pickle=True)
    assert "Python objects" in (weight_formats.problem(tmp_path / "s.npy") or "")
    np.save(tmp_path / "ok.npy", np.zeros(2, dtype=[("a", "f4"), ("b", "<i8")]))
    assert weight_formats.problem(tmp_path / "ok.npy") is None


def test_a_spec_listing_a_pickle_is_refused_at_load(project: Path) -> None:
    spec = project / "model_specs" / "toy" / "model.yaml"
    text = spec.read_text()
    spec.write_text(text.replace("  sha256:\n", "  sha256:\n    model.pt: " + "ab" * 32 + "\n"))
    assert "model.pt" in spec.read_text()
    res = subprocess.run([*KMODEL, "info", "toy"], capture_output=True, text=True)
    assert res.returncode != 0
    lines = [ln for ln in res.stderr.splitlines() if ln.startswith("Error [")]
    assert len(lines) == 1 and lines[0].startswith("Error [KM101]"), res.stderr
    assert "model.pt" in lines[0] and "pickle" in lines[0] and "safetensors" in lines[0]
    assert "weights.sha256" in lines[0]


def test_kmodel_hash_refuses_a_pickle_in_the_weights_folder(project: Path) -> None:
    weights = project / "model_specs" / "toy" / "weights"
    (weights / "extra.bin").write_bytes(pickle.dumps([1, 2]))
    res = subprocess.run([*KMODEL, "hash", "toy", "--write"], capture_output=True, text=True)
    assert res.returncode == 1 and "Traceback" not in res.stderr
    assert "Error [KM305]" in res.stderr and "extra.bin" in res.stderr, res.stderr
    (weights / "extra.bin").unlink()
    (weights / "extra.npy").write_bytes(pickle.dumps([1, 2]))  # renamed: its content says
    res = subprocess.run([*KMODEL, "hash", "toy", "--write"], capture_output=True, text=True)
    assert res.returncode == 1 and "Error [KM305]" in res.stderr, res.stderr
    assert "pickle inside" in res.stderr


# --- real models in one real env --------------------------------------------------------

ENV_SPEC = """\
description: weight formats (the tests' one env)
python: "3.11"
pip:
  - numpy>=2.2
  - safetensors
  - ml_dtypes
  - onnx
  - onnxruntime
  - lightgbm
"""

SPEC = """\
name: {name}
version: 0.1.0
env: {env}
entrypoint: model.py:build
inputs:
  - name: x
    dtype: float32
    shape: [3]
outputs:
  - name: y
    dtype: float32
    shape: []
train:
  args: {{}}
"""

#: fit: least squares of y on [x, 1]; predict: x @ w + b. Each variant keeps its weights
#: in its own way (the {state} part).
LINEAR = """\
import numpy as np


class Linear:
    def __init__(self):
        self.w, self.b = np.zeros(3, np.float32), np.float32(0.0)

    def fit(self, x, y):
        coef = np.linalg.lstsq(np.c_[x, np.ones(len(x))], y, rcond=None)[0]
        self.w, self.b = coef[:3].astype(np.float32), np.float32(coef[3])
        return self

    def predict(self, x):
        return (x @ self.w + self.b).astype(np.float32)
{state}

def build():
    return Linear()
"""


def linear(state: str) -> str:
    return LINEAR.format(state="\n".join("    " + ln if ln else ln
                                         for ln in state.splitlines()))


def expected(x: np.ndarray, y: np.ndarray, x_in: np.ndarray) -> np.ndarray:
    """What the linear model, fitted on (x, y), predicts for x_in (computed here)."""
    coef = np.linalg.lstsq(np.c_[x, np.ones(len(x))], y, rcond=None)[0]
    return x_in @ coef[:3].astype(np.float32) + np.float32(coef[3])


@pytest.fixture(scope="module")
def wf_lock(tmp_path_factory: pytest.TempPathFactory, kmodel_home: Path) -> str:
    """The env's lockfile, resolved once; tests copy it (the env is built once: its key)."""
    folder = tmp_path_factory.mktemp("wf-lock")
    (folder / "envs").mkdir()
    (folder / "envs" / "wf.yaml").write_text(ENV_SPEC)
    res = subprocess.run([*KMODEL, "--envs", str(folder / "envs"), "env", "lock", "wf"],
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr
    return (folder / "envs" / "wf.lock").read_text()


@pytest.fixture
def wf(project: Path, wf_lock: str) -> Path:
    """The project with the weight-formats env, training data (y linear in x, plus
    noise) and an input to predict."""
    (project / "envs" / "wf.yaml").write_text(ENV_SPEC)
    (project / "envs" / "wf.lock").write_text(wf_lock)
    rng = np.random.default_rng(7)
    x = rng.normal(size=(300, 3)).astype(np.float32)
    y = (x @ np.array([1.5, -2.0, 0.25]) + 3.0 + rng.normal(0, 0.1, 300)).astype(np.float32)
    from kmodel.io import hdf5

    hdf5.write_table(project / "train.h5", {"inputs": {"x": x}, "targets": {"y": y}},
                     [f"r{i}" for i in range(300)])
    make_input(project / "in.h5", rows=50, seed=3)
    return project


def add_model(project: Path, name: str, code: str, env: str = "wf") -> Path:
    folder = project / "model_specs" / name
    folder.mkdir()
    (folder / "model.py").write_text(code)
    (folder / "model.yaml").write_text(SPEC.format(name=name, env=env))
    return folder


def kmodel(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*KMODEL, *args], capture_output=True, text=True, timeout=600)


def train_and_predict(project: Path, name: str) -> np.ndarray:
    res = kmodel("train", name, "-i", "train.h5", "-o", f"w/{name}")
    assert res.returncode == 0, res.stderr
    res = kmodel("predict", name, "-i", "in.h5", "-o", f"{name}.h5", "--weights", f"w/{name}")
    assert res.returncode == 0, res.stderr
    with h5py.File(project / f"{name}.h5") as f:
        return np.asarray(f["preds/y"][()])


def one_error(res: subprocess.CompletedProcess[str], code: str, *parts: str) -> str:
    assert res.returncode != 0 and "Traceback" not in res.stderr, res.stderr
    lines = [ln for ln in res.stderr.splitlines() if ln.startswith("Error [")]
    assert len(lines) == 1 and lines[0].startswith(f"Error [{code}]"), res.stderr
    for part in parts:
        assert part in lines[0], (part, lines[0])
    return lines[0]


def inputs(project: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    with h5py.File(project / "train.h5") as f:
        x, y = f["inputs/x"][()], f["targets/y"][()]
    with h5py.File(project / "in.h5") as f:
        return x, y, f["inputs/x"][()]


NPY = """\
def get_weights(self):
    return {"lin-w-0": self.w, "lin-b-0": np.asarray(self.b)}

def set_weights(self, w):
    assert isinstance(w, dict) and sorted(w) == ["lin-b-0", "lin-w-0"], w
    self.w, self.b = w["lin-w-0"], w["lin-b-0"]
"""

#: names with "/" and ".", bfloat16 (ml_dtypes): one weights.safetensors; set_weights
#: checks it gets them back as given
SAFETENSORS = """\
def get_weights(self):
    import ml_dtypes
    return {"layer.0/kernel": self.w, "layer.0/bias": np.asarray(self.b),
            "layer.0/kernel_bf16": self.w.astype(ml_dtypes.bfloat16)}

def set_weights(self, w):
    assert sorted(w) == ["layer.0/bias", "layer.0/kernel", "layer.0/kernel_bf16"], w
    assert w["layer.0/kernel_bf16"].dtype.name == "bfloat16", w["layer.0/kernel_bf16"].dtype
    assert w["layer.0/kernel"].dtype == np.float32
    self.w, self.b = w["layer.0/kernel"], w["layer.0/bias"]
"""

#: a list of 12 arrays (Keras' get_weights style): set_weights gets a list, in order
LIST = """\
def get_weights(self):
    return [self.w, np.asarray(self.b)] + [np.full(2, i) for i in range(2, 12)]

def set_weights(self, w):
    assert isinstance(w, list) and len(w) == 12, type(w)
    assert [int(a[0]) for a in w[2:]] == list(range(2, 12)), [a[0] for a in w[2:]]
    self.w, self.b = w[0], w[1]
"""


@pytest.mark.slow
@pytest.mark.parametrize(("variant", "files"), [
    (NPY, ["hashes.json", "lin-b-0.npy", "lin-w-0.npy", "params.json", "provenance.json"]),
    (SAFETENSORS, ["hashes.json", "params.json", "provenance.json", "weights.safetensors"]),
    (LIST, ["hashes.json", "params.json", "provenance.json", "weights.safetensors"])],
    ids=["npy", "safetensors-names-bf16", "list"])
def test_get_weights_round_trips(wf: Path, variant: str, files: list[str]) -> None:
    add_model(wf, "lin", linear(variant))
    preds = train_and_predict(wf, "lin")
    np.testing.assert_allclose(preds, expected(*inputs(wf)), rtol=1e-5, atol=1e-5)
    assert sorted(p.name for p in (wf / "w" / "lin").iterdir()) == files
    params = json.loads((wf / "w" / "lin" / "params.json").read_text())
    assert params["weights"] == {NPY: ["lin-b-0", "lin-w-0"],
                                 SAFETENSORS: ["layer.0/bias", "layer.0/kernel",
                                               "layer.0/kernel_bf16"],
                                 LIST: [str(i) for i in range(12)]}[variant]
