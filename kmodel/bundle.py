"""Bundles: a model (or a whole composition) as one file to share, like dclab's .modc or a
BioImage.IO zip.

A bundle is a zip of a search-path folder: ``NAME/`` (the model's folder: spec, code,
weights), ``envs/`` (its env spec and lock) and ``manifest.json`` (a ``bundle-manifest``
document), which lists the sha256 of every other file. A composition's bundle holds every
base model, the ensembler, their envs and the trained ensembler's weights
(``composition/weights/``). Opening a bundle checks every file against the manifest, and
nothing else may be in it: a bundle with any file changed, added or missing is refused.
Predicting from a bundle extracts it once into KMODEL_HOME/bundles/ (keyed by the
bundle's sha256) and runs it from there.

zipfile (30 ms) is imported by the functions that open bundles: `kmodel predict MODEL`
imports this module only to tell a bundle by its name.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from kmodel import formats
from kmodel._fs import (
    atomic_path,
    check_input_file,
    guard_output,
    home_error,
    home_folder,
    kmodel_home,
    sha256_file,
    share_tree,
    tmp_sibling,
)
from kmodel._version import __version__
from kmodel.errors import BundleError, KmodelError, UsageError
from kmodel.registry import ENVS, Model, Registry
from kmodel.resources import JobOptions
from kmodel.spec import NAME_RE
from kmodel.weights import WEIGHTS_MANIFEST, Weights

BUNDLE_MANIFEST = "manifest.json"
#: what bundles of kmodel 0.1 wrote before documents carried a format version
LEGACY = ("kmodel_bundle", 1)
SUFFIX = ".kmodel"
MAX_BYTES = 8 << 30  # what a bundle may expand to (a zip bomb stops here)
MAX_MANIFEST = 16 << 20  # a manifest lists files: 16 MB is hundreds of thousands of them


@dataclass(frozen=True)
class Manifest:
    model: str  # the model to run: a base model, or a composition's ensembler
    files: dict[str, str]  # archive name -> sha256
    composition: dict[str, Any] | None  # name, models, ensembler, weights, batch_size

    @property
    def models(self) -> list[str]:
        return list(self.composition["models"]) if self.composition else []


def _model_files(model: Model) -> dict[str, Path]:
    """Archive name -> file: the model's folder (no caches, no hidden files)."""
    out = {}
    inside = model.folder.resolve()
    for path in sorted(model.folder.rglob("*")):
        rel = path.relative_to(model.folder)
        if any(p.startswith((".", "__pycache__")) for p in rel.parts) or not path.is_file():
            continue
        if not path.resolve().is_relative_to(inside):
            raise BundleError(f"{path} links to {path.resolve()}, outside the model's folder; "
                              "copy the file in, or remove the link, before packing")
        out[f"{model.name}/{rel.as_posix()}"] = path
    return out


def _env_files(registry: Registry, model: Model) -> dict[str, Path]:
    from kmodel.envs import backend_for

    ref = registry.env_of(model)
    lock = backend_for(ref).checked_lockfile(ref)  # locked, and not older than its spec
    return {f"{ENVS}/{ref.path.name}": ref.path, f"{ENVS}/{lock.name}": lock}


def pack(registry: Registry, name: str, output: Path) -> Manifest:
    """Bundle model ``name``, its weights (checked against their hashes) and its env."""
    model = registry.model(name)
    if weights := Weights.of(model):
        weights.verify(name)
    files = {**_model_files(model), **_env_files(registry, model)}
    return _write(output, files, {"model": name, "version": model.spec.version})


def pack_composition(registry: Registry, config: Path, output: Path) -> Manifest:
    """Bundle a composition's base models, its ensembler with its trained weights, and their
    envs: applying the bundle gives the composition's ensemble predictions."""
    from kmodel.plan import load_plan

    plan = load_plan(config, registry)
    reg = plan.registry(registry)
    cfg = plan.config
    trained = plan.ensembler_weights
    try:
        fitted = Weights.from_folder(trained)
    except KmodelError:
        raise BundleError(f"{trained} holds no trained ensembler; run `kmodel run {config}` "
                          "first") from None
    fitted.verify(cfg.ensembler, "run the composition again")
    files: dict[str, Path] = {}
    for name in [*cfg.models, cfg.ensembler]:
        model = reg.model(name)
        own = plan.method != "cv" or name == cfg.ensembler
        if own and (weights := Weights.of(model)):
            weights.verify(name)
        files |= _model_files(model) | _env_files(reg, model)
    files |= _folder_files(trained, "composition/weights")
    base: dict[str, str] = {}
    if plan.method == "cv":  # the test predictions come from the refitted weights
        for name in cfg.models:
            refitted = plan.full_weights(name)
            try:
                Weights.from_folder(refitted).verify(name, "run the composition again")
            except KmodelError as e:
                raise BundleError(f"{refitted}: {e}; run `kmodel run {config}` first") from None
            base[name] = f"composition/base/{name}"
            files |= _folder_files(refitted, base[name])
    return _write(output, files, {"model": cfg.ensembler, "composition": {
        "name": cfg.name, "models": list(cfg.models), "ensembler": cfg.ensembler,
        "weights": "composition/weights", "base_weights": base,
        "batch_size": cfg.batch_size}})


def _folder_files(folder: Path, arc: str) -> dict[str, Path]:
    return {f"{arc}/{p.name}": p for p in sorted(folder.iterdir()) if p.is_file()}


def _write(output: Path, files: dict[str, Path], meta: dict[str, Any]) -> Manifest:
    import zipfile

    if not output.name.endswith(SUFFIX) or output.name == SUFFIX:
        raise UsageError(f"{output}: a bundle's name ends in {SUFFIX} (`kmodel predict` "
                         "tells bundles by it), e.g. NAME-VERSION.kmodel")
    guard_output(output, files.values(), replaceable=_is_bundle_file)
    digests = {arc: sha256_file(path) for arc, path in files.items()}
    text = formats.dumps("bundle-manifest", {"kmodel_version": __version__, **meta,
                                             "files": digests})
    with atomic_path(output) as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr(BUNDLE_MANIFEST, text)
        for arc, path in sorted(files.items()):
            z.write(path, arc)
    return Manifest(meta["model"], digests, meta.get("composition"))


def _is_bundle_file(path: Path) -> bool:
    """A bundle `kmodel pack` wrote (it may be replaced by a new one)."""
    import zipfile

    with zipfile.ZipFile(path) as z:
        infos = _entries(path, z.infolist())
        _manifest_doc(_bounded(z, infos[BUNDLE_MANIFEST], MAX_MANIFEST), path)
    return True


def _manifest_doc(text: bytes, bundle: Path) -> dict[str, Any]:
    """The manifest's body, read by its version's reader; BundleError if it is none."""
    try:
        version, doc = formats.loads(text, "bundle-manifest", bundle / BUNDLE_MANIFEST)
    except KmodelError as e:
        raise BundleError(f"{bundle}: {e}") from None
    if version == 0 and doc.get(LEGACY[0]) != LEGACY[1]:
        raise BundleError(f"{bundle}: {BUNDLE_MANIFEST} is not a kmodel bundle manifest; "
                          "pack it again")
    files = doc.get("files")
    if not isinstance(files, dict) or not isinstance(doc.get("model"), str):
        raise BundleError(f"{bundle}: {BUNDLE_MANIFEST} is not a kmodel bundle manifest "
                          "(no files or model); pack it again")
    return dict(doc)


def _safe(name: str) -> bool:
    p = PurePosixPath(name)
    return bool(name) and not p.is_absolute() and ".." not in p.parts and "\\" not in name


def read(bundle: Path) -> Manifest:
    """The bundle's manifest, after checking that the bundle holds exactly the files it
    lists, each with its sha256; else BundleError naming the first difference."""
    import zipfile

    check_input_file(bundle)
    try:
        with zipfile.ZipFile(bundle) as z:
            infos = _entries(bundle, z.infolist())
            if BUNDLE_MANIFEST not in infos:
                raise BundleError(f"{bundle}: no {BUNDLE_MANIFEST}; give a file `kmodel pack` "
                                  "wrote")
            if infos[BUNDLE_MANIFEST].file_size > MAX_MANIFEST:
                raise BundleError(f"{bundle}: its {BUNDLE_MANIFEST} is "
                                  f"{infos[BUNDLE_MANIFEST].file_size:,} bytes, more than a "
                                  f"manifest holds ({MAX_MANIFEST >> 20} MB); not a bundle "
                                  "`kmodel pack` wrote")
            doc = _manifest_doc(_bounded(z, infos[BUNDLE_MANIFEST], MAX_MANIFEST), bundle)
            files = doc["files"]
            members = set(infos) - {BUNDLE_MANIFEST}
            if extra := sorted(members - set(files)):
                raise BundleError(f"{bundle}: {extra[0]} is not in its manifest; a bundle "
                                  "holds only what `kmodel pack` put in it")
            if missing := sorted(set(files) - members):
                raise BundleError(f"{bundle}: {missing[0]} is listed but missing; pack it "
                                  "again")
            if sum(infos[n].file_size for n in members) > MAX_BYTES:
                raise BundleError(f"{bundle}: expands to more than {MAX_BYTES >> 30} GB")
            for name in sorted(members):
                if not _safe(name):
                    raise BundleError(f"{bundle}: unsafe file name {name!r} (absolute or "
                                      "with ..); pack it again")
                h = hashlib.sha256()
                size = 0
                with z.open(infos[name]) as f:
                    while chunk := f.read(1 << 20):
                        size += len(chunk)
                        if size > infos[name].file_size:  # a header that lies about it
                            raise BundleError(f"{bundle}: {name} expands beyond the size its "
                                              "entry declares; not a bundle `kmodel pack` "
                                              "wrote")
                        h.update(chunk)
                if h.hexdigest() != files[name]:
                    raise BundleError(f"{bundle}: {name} was changed since it was packed "
                                      f"(sha256 {h.hexdigest()[:12]}…, the manifest says "
                                      f"{str(files[name])[:12]}…); get the original bundle")
    except (zipfile.BadZipFile, zipfile.LargeZipFile, NotImplementedError, ValueError,
            KeyError, EOFError, OSError) as e:
        raise BundleError(f"{bundle}: not a readable bundle ({e}); give a file "
                          "`kmodel pack` wrote") from None
    composition = doc.get("composition")
    manifest = Manifest(doc["model"], dict(files), composition if isinstance(composition, dict)
                        else None)
    _check_fields(bundle, manifest, composition)
    return manifest


def _entries(bundle: Path, infos: list[Any]) -> dict[str, Any]:
    """The zip's entries by name: each name once, no folder entries (pack writes files
    only), checked before anything is read or extracted."""
    seen: dict[str, Any] = {}
    for info in infos:
        if info.filename in seen:
            raise BundleError(f"{bundle}: {info.filename!r} is in it twice (the last one would "
                              "be the one read); not a bundle `kmodel pack` wrote")
        if info.is_dir():
            raise BundleError(f"{bundle}: {info.filename!r} is a folder entry, which no "
                              "bundle `kmodel pack` wrote holds")
        seen[info.filename] = info
    return seen


def _bounded(z: Any, info: Any, limit: int) -> bytes:
    """An entry's bytes, reading at most ``limit`` of them (a lying header cannot make
    kmodel read more)."""
    with z.open(info) as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise BundleError(f"{info.filename} expands beyond {limit >> 20} MB")
    return bytes(data)


def _check_fields(bundle: Path, manifest: Manifest, composition: Any) -> None:
    """What the manifest names must be in the bundle itself: each model's folder, the
    trained weights (never a path elsewhere), a batch size that is a positive integer."""
    def bad(what: str) -> BundleError:
        return BundleError(f"{bundle}: its manifest {what}; pack it again")

    if composition is not None:
        if not isinstance(composition, dict) or not isinstance(composition.get("models"), list) \
                or not composition["models"]:
            raise bad("has no list of models for its composition")
        size = composition.get("batch_size")
        if not isinstance(size, int) or isinstance(size, bool) or size < 1:
            raise bad(f"gives batch_size {size!r}, not a positive integer")
        if composition.get("weights") != "composition/weights":
            raise bad(f"puts the ensembler's weights at {composition.get('weights')!r}, "
                      "outside composition/weights")
        base = composition.get("base_weights", {})
        if not isinstance(base, dict) or any(
                path != f"composition/base/{name}" or name not in composition["models"]
                or f"{path}/{WEIGHTS_MANIFEST}" not in manifest.files
                for name, path in base.items()):
            raise bad(f"puts base models' weights at {base!r}, not in composition/base/<model>")
    for name in [manifest.model, *manifest.models]:
        if not isinstance(name, str) or not re.fullmatch(NAME_RE, name) \
                or f"{name}/model.yaml" not in manifest.files:
            raise bad(f"names model {name!r}, whose {name}/model.yaml it does not hold")


def unpack(bundle: Path, folder: Path) -> Manifest:
    """Check ``bundle`` and extract it into ``folder`` (new; it appears whole or not at
    all). The folder is a search-path folder: KMODEL_PATH=folder finds its models."""
    import zipfile

    manifest = read(bundle)
    if folder.exists():
        raise BundleError(f"{folder} exists; unpack into a new folder")
    tmp = tmp_sibling(folder)
    try:
        tmp.mkdir(parents=True)
        with zipfile.ZipFile(bundle) as z:
            for name in manifest.files:
                target = tmp / name
                try:
                    target.parent.mkdir(parents=True, exist_ok=True)
                    with z.open(name) as src, open(target, "xb") as dst:
                        shutil.copyfileobj(src, dst)
                except (FileExistsError, NotADirectoryError, IsADirectoryError) as e:
                    raise BundleError(f"{bundle}: {name} cannot be extracted beside its other "
                                      f"files ({e.strerror}); not a bundle `kmodel pack` "
                                      "wrote") from None
        if not _intact(tmp, manifest):  # as packed: checked again once written
            raise BundleError(f"{bundle} changed while it was extracted; extract it again")
        share_tree(tmp)  # into a group's KMODEL_HOME: the group may replace it too
        os.replace(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest


def _intact(folder: Path, manifest: Manifest) -> bool:
    return all((folder / n).is_file() and sha256_file(folder / n) == d
               for n, d in manifest.files.items())


def opened(bundle: Path) -> tuple[Path, Manifest]:
    """The bundle extracted into KMODEL_HOME/bundles/<its sha256> (once), and its manifest;
    an extraction that no longer matches the manifest is made again."""
    manifest = read(bundle)
    folder = home_folder("bundles") / sha256_file(bundle)[:32]
    if folder.is_dir():
        if _intact(folder, manifest):
            return folder, manifest
        try:
            shutil.rmtree(folder)
        except PermissionError as e:  # another user's extraction, in a home not shared
            raise home_error(kmodel_home(), e) from None
    try:
        unpack(bundle, folder)
    except (BundleError, OSError):
        if folder.is_dir() and _intact(folder, manifest):  # another process extracted it
            return folder, manifest
        raise
    return folder, manifest


def predict(bundle: Path, pairs: Sequence[tuple[Path, Path]], batch_size: int | None = None,
            options: JobOptions | None = None) -> list[Path]:
    """Run a bundle on each (input, output): its model, or for a composition's bundle its
    base models then its ensembler (the ensemble's predictions). ``options``: the jobs'
    threads, device and log (default: each model's spec's)."""
    import tempfile

    from kmodel.compose import apply
    from kmodel.io import hdf5
    from kmodel.predict import predict_many

    root, manifest = opened(bundle)
    registry = Registry([root], root / ENVS)
    for name in [manifest.model, *manifest.models]:  # the bundle's own, never ./model_specs
        if registry.model(name).folder.resolve() != (root / name).resolve():
            raise BundleError(f"{bundle}: model {name!r} is not the one in the bundle; "
                              "pack it again")
    if manifest.composition is None:
        return predict_many(registry, manifest.model, pairs, batch_size=batch_size,
                            options=options)
    size = batch_size or int(manifest.composition["batch_size"])
    weights = root / "composition" / "weights"
    if len({os.path.realpath(o) for _, o in pairs}) != len(pairs):
        raise UsageError("two -o options name the same output; give each input its own")
    for _, output in pairs:  # every output checked before anything runs
        guard_output(output, [*(i for i, _ in pairs), bundle], replaceable=hdf5.is_prediction)
    done = []
    for input_path, output in pairs:
        with tempfile.TemporaryDirectory(prefix="kmodel-bundle-") as tmp:
            preds = []
            for name in manifest.models:
                preds.append(Path(tmp) / f"{name}.h5")
                predict_many(registry, name, [(input_path, preds[-1])], batch_size=size,
                             weights=_base_weights(root, manifest, name), options=options)
            done.append(apply(registry, manifest.model, preds, weights, output,
                              options=options))
    return done


def _base_weights(root: Path, manifest: Manifest, name: str) -> Weights | None:
    """A base model's weights refitted by the composition (cv), else None: its own."""
    base = (manifest.composition or {}).get("base_weights") or {}
    return Weights.from_folder(root / base[name]) if name in base else None


def is_bundle(name: str) -> bool:
    """A MODEL argument that names a bundle (a missing one too: predict then says so)."""
    return name.endswith(SUFFIX)


__all__ = ["Manifest", "is_bundle", "opened", "pack", "pack_composition", "predict", "read",
           "unpack"]
