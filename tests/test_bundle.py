"""Bundles: one file per model or composition, checked file by file when opened."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import h5py
import numpy as np
import pytest

from .conftest import SMALL_COMPOSITION

pytestmark = pytest.mark.slow  # runs models in their envs
KMODEL = [sys.executable, "-m", "kmodel"]

CONFIG = SMALL_COMPOSITION


def kmodel(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*KMODEL, *args], capture_output=True, text=True, timeout=600,
                          env=env)


def datasets(path: Path) -> dict[str, np.ndarray]:
    with h5py.File(path) as f:
        return {"id": f["metadata/id"][()], **{k: v[()] for k, v in f["preds"].items()}}


def rewrite(bundle: Path, out: Path, change: dict[str, bytes | None],
            manifest: dict[str, str] | None = None) -> Path:
    """A copy of ``bundle`` with members replaced (bytes), dropped (None) or added, and
    optionally the manifest's sha256 entries changed too."""
    with zipfile.ZipFile(bundle) as z, zipfile.ZipFile(out, "w") as w:
        names = z.namelist()
        for name in names:
            data = z.read(name)
            if name == "manifest.json" and manifest is not None:
                doc = json.loads(data)
                doc.pop("content_sha256")  # a forger leaves out what would give it away
                doc["files"].update(manifest)
                data = json.dumps(doc).encode()
            if name in change:
                data = change[name]  # type: ignore[assignment]
            if data is not None:
                w.writestr(name, data)
        for name, data in change.items():
            if name not in names and data is not None:
                w.writestr(name, data)
    return out


def test_a_model_bundle_predicts_as_the_model_and_any_change_is_refused(project: Path) -> None:
    assert kmodel("data", "breast_cancer", "--train", "tr.h5", "--test", "te.h5").returncode == 0
    res = kmodel("pack", "mlp", "-o", "mlp-1.0.0.kmodel")
    assert res.returncode == 0, res.stderr
    with zipfile.ZipFile(project / "mlp-1.0.0.kmodel") as z:
        names = set(z.namelist())
    assert {"manifest.json", "mlp/model.yaml", "mlp/model.py", "mlp/weights/params.json",
            "envs/numpy2.yaml", "envs/numpy2.lock"} <= names
    assert kmodel("predict", "mlp-1.0.0.kmodel", "-i", "te.h5", "-o", "b.h5").returncode == 0
    assert kmodel("predict", "mlp", "-i", "te.h5", "-o", "m.h5").returncode == 0
    a, b = datasets(project / "b.h5"), datasets(project / "m.h5")
    assert all(np.array_equal(a[k], b[k]) for k in a) and a.keys() == b.keys()

    bundle = project / "mlp-1.0.0.kmodel"
    code = b"def build(**kw):\n    raise SystemExit('pwned')\n"
    tampered = {
        "changed": ({"mlp/model.py": code}, None, "mlp/model.py was changed since it was packed"),
        "added": ({"mlp/extra.py": code}, None, "mlp/extra.py is not in its manifest"),
        "dropped": ({"mlp/model.py": None}, None, "mlp/model.py is listed but missing"),
        "escaping": ({"../evil.py": code}, {"../evil.py": hashlib.sha256(code).hexdigest()},
                     "unsafe file name '../evil.py'"),
    }
    for what, (change, manifest, part) in tampered.items():
        bad = rewrite(bundle, project / f"{what}.kmodel", change, manifest)
        for cmd in (["predict", str(bad), "-i", "te.h5", "-o", f"{what}.h5"],
                    ["unpack", str(bad), "-o", f"{what}-folder"]):
            res = kmodel(*cmd)
            assert res.returncode == 1, (what, res.stderr)
            assert res.stderr.startswith(f"Error [KM310]: {bad}: ") and part in res.stderr, \
                res.stderr
            assert len(res.stderr.strip().splitlines()) == 1
        assert not (project / f"{what}.h5").exists()
        assert not (project / f"{what}-folder").exists()
        assert not (project.parent / "evil.py").exists()
    (project / "junk.kmodel").write_bytes(b"not a zip")
    res = kmodel("predict", "junk.kmodel", "-i", "te.h5", "-o", "j.h5")
    assert res.returncode == 1 and res.stderr.startswith("Error [KM310]: "), res.stderr


def test_an_unpacked_bundle_is_a_folder_for_the_search_path(project: Path, tmp_path: Path
                                                            ) -> None:
    assert kmodel("pack", "gnb", "-o", "gnb.kmodel").returncode == 0
    folder = tmp_path.with_name(f"{tmp_path.name}-unpacked")
    res = kmodel("unpack", "gnb.kmodel", "-o", str(folder))
    assert res.returncode == 0, res.stderr
    assert (folder / "gnb" / "model.yaml").is_file()
    assert (folder / "envs" / "sklearn-legacy.lock").is_file()
    os.chdir(tmp_path.parent)  # away from the project's own model_specs
    listing = kmodel("ls", env={**os.environ, "KMODEL_PATH": str(folder)})
    assert listing.stdout.split()[:1] == ["gnb"] and str(folder) in listing.stdout
    again = kmodel("unpack", str(project / "gnb.kmodel"), "-o", str(folder))
    assert again.returncode == 1 and "exists; unpack into a new folder" in again.stderr


def test_a_composition_bundle_reproduces_its_ensemble_bit_for_bit(project: Path) -> None:
    """Cross-fitted: the bundle holds the base models' refitted weights and uses them (the
    shipped ones, made different here, play no part)."""
    from kmodel.registry import Registry
    from kmodel.weights import write_hashes

    w = project / "model_specs/mlp/weights/mlp-bias-1.npy"
    np.save(w, np.load(w) + 1.0)
    write_hashes(Registry().model("mlp"))
    (project / "c.yaml").write_text(CONFIG)
    res = kmodel("run", "c.yaml", "--cores", "2")
    assert res.returncode == 0, res.stderr[-3000:]
    res = kmodel("pack", "--composition", "c.yaml", "-o", "small.kmodel")
    assert res.returncode == 0, res.stderr
    out = project / "out/small"
    res = kmodel("predict", "small.kmodel", "-i", str(out / "data/test.h5"), "-o", "ens.h5")
    assert res.returncode == 0, res.stderr
    a, b = datasets(project / "ens.h5"), datasets(out / "ensemble/test.h5")
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    no_run = kmodel("pack", "--composition", "c.yaml", "-o", "x.kmodel",
                    env={**os.environ, "KMODEL_HOME": str(project / "elsewhere")})
    assert no_run.returncode == 0  # packing reads files only: no env is needed


def test_a_manifest_that_lies_about_its_fields_is_refused(project: Path) -> None:
    """Each file may match its hash and still the manifest may point elsewhere: at a model
    the bundle does not hold (one of ./model_specs would run instead), at weights outside
    the bundle, at a batch size that is not one."""
    assert kmodel("pack", "mlp", "-o", "mlp.kmodel").returncode == 0
    with zipfile.ZipFile(project / "mlp.kmodel") as z:
        doc = json.loads(z.read("manifest.json"))
        doc.pop("content_sha256")  # a forger leaves out what would give it away
        members = {n: z.read(n) for n in z.namelist() if n != "manifest.json"}

    def bundle(name: str, change: dict[str, object]) -> str:
        with zipfile.ZipFile(project / name, "w") as w:
            w.writestr("manifest.json", json.dumps({**doc, **change}))
            for n, data in members.items():
                w.writestr(n, data)
        return name

    composition = {"name": "x", "models": ["mlp"], "ensembler": "mlp",
                   "weights": "composition/weights", "batch_size": 64}
    cases = {
        bundle("other.kmodel", {"model": "logreg"}): "names model 'logreg', whose "
                                                     "logreg/model.yaml it does not hold",
        bundle("escape.kmodel", {"model": "../../etc"}): "names model '../../etc'",
        bundle("weights.kmodel", {"composition": {**composition, "weights": "/tmp"}}):
            "outside composition/weights",
        bundle("size.kmodel", {"composition": {**composition, "batch_size": "abc"}}):
            "batch_size 'abc', not a positive integer",
        bundle("models.kmodel", {"composition": {**composition, "models": 5}}):
            "no list of models",
    }
    for name, part in cases.items():
        res = kmodel("predict", name, "-i", "x.h5", "-o", "out.h5")
        assert res.returncode == 1 and res.stderr.startswith(f"Error [KM310]: {name}: "), \
            res.stderr
        assert part in res.stderr, res.stderr
    res = kmodel("pack", "mlp", "-o", "mlp.zip")
    assert res.returncode == 2 and "a bundle's name ends in .kmodel" in res.stderr
    res = kmodel("predict", "gone.kmodel", "-i", "x.h5", "-o", "out.h5")
    assert res.returncode == 1 and res.stderr.startswith("Error [KM400]: "), res.stderr


def test_zips_that_are_not_what_pack_writes_are_refused_before_extracting(
        project: Path) -> None:
    """Two entries of one name (the last would run), a folder entry, an entry the manifest
    does not list, a manifest that inflates past any real one, files that cannot sit side by
    side: KM310 naming the bundle, checked before anything is extracted."""
    assert kmodel("pack", "mlp", "-o", "mlp.kmodel").returncode == 0
    with zipfile.ZipFile(project / "mlp.kmodel") as z:
        members = {n: z.read(n) for n in z.namelist()}

    def bundle(name: str, entries: list[tuple[str, bytes]]) -> str:
        with zipfile.ZipFile(project / name, "w", zipfile.ZIP_DEFLATED) as w:
            for n, data in entries:
                if n.endswith("/"):
                    w.writestr(zipfile.ZipInfo(n), b"")
                else:
                    w.writestr(n, data)
        return name

    ours = list(members.items())
    evil = b"def build():\n    raise SystemExit('pwned')\n"
    cases = {
        bundle("twice.kmodel", [*ours, ("mlp/model.py", evil)]): "'mlp/model.py' is in it "
                                                                 "twice",
        bundle("folder.kmodel", [*ours, ("mlp/extra/", b"")]): "is a folder entry",
        bundle("extra.kmodel", [*ours, ("mlp/evil.py", evil)]): "mlp/evil.py is not in its "
                                                                "manifest",
        bundle("big.kmodel", [(n, d) for n, d in ours if n != "manifest.json"]
               + [("manifest.json", b" " * (17 << 20))]): "more than a manifest holds",
    }
    import warnings

    for name, message in cases.items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # zipfile warns of the duplicate it wrote
            res = kmodel("predict", name, "-i", "x.h5", "-o", "o.h5")
        assert res.returncode == 1, (name, res.stderr)
        assert res.stderr.startswith(f"Error [KM310]: {name}: ") and message in res.stderr, \
            (name, res.stderr)
    assert not list(Path(os.environ["KMODEL_HOME"], "bundles").glob("*/mlp/evil.py"))
    doc = json.loads(members["manifest.json"])  # a file and a folder of the same name
    del doc["content_sha256"]
    doc["files"] |= {"mlp/zz": hashlib.sha256(b"a").hexdigest(),
                     "mlp/zz/y": hashlib.sha256(b"b").hexdigest()}
    clash = bundle("clash.kmodel", [*((n, d) for n, d in ours if n != "manifest.json"),
                                    ("manifest.json", json.dumps(doc).encode()),
                                    ("mlp/zz", b"a"), ("mlp/zz/y", b"b")])
    res = kmodel("unpack", clash, "-o", "out")
    assert res.returncode == 1 and res.stderr.startswith("Error [KM310]: clash.kmodel: ") \
        and "cannot be extracted" in res.stderr, res.stderr
    assert not (project / "out").exists()
    (project / "bad.kmodel").write_bytes(b"PK\x03\x04 not really a zip")
    res = kmodel("unpack", "bad.kmodel", "-o", "out")
    assert res.returncode == 1 and res.stderr.startswith("Error [KM310]: bad.kmodel: not a "
                                                         "readable bundle"), res.stderr
