"""Build a small local conda channel (file://) for the conda backend's tests.

Conda channels are unreachable in CI, so the tests make their own:

* tiny ``noarch: generic`` packages (``kmtest-a`` needs ``kmtest-b``) that solve for every
  platform, plus ``kmtest-c``, built once for linux-64 and once for osx-arm64;
* ``python`` repackaged from the interpreter running the tests (``sys.base_prefix``, built
  ``--enable-shared``): the RUNPATH of the executable and of libpython is rewritten to
  ``$ORIGIN/../lib`` with patchelf (when available) and the text files that hold the old
  prefix are marked with a prefix placeholder, so the installer relocates them;
* ``pip`` as a ``noarch: python`` package, from the wheel ensurepip bundles.

Packages are written in the ``.conda`` format (conda_package_streaming) and the channel is
indexed with ``rattler.index.index_fs``.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import tempfile
import time
import zipfile
from collections.abc import Iterable
from pathlib import Path

from conda_package_streaming.create import anonymize, conda_builder
from rattler.index import index_fs

SUBDIRS = ("noarch", "linux-64", "osx-arm64")
PY_VER = f"{sys.version_info.major}.{sys.version_info.minor}.{sys.version_info.micro}"
PY_MM = f"{sys.version_info.major}.{sys.version_info.minor}"

# what the repackaged python leaves out of lib/pythonX.Y (size, and nothing needs it)
_SKIP_DIRS = {"test", "idlelib", "tkinter", "turtledemo", "__pycache__", "lib2to3",
              "unittest/test", "ctypes/test", "distutils/tests", "site-packages"}
_SKIP_SUFFIXES = (".a", ".pyc")


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes, mode: int = 0o644) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), mode, int(time.time())
    tar.addfile(anonymize(info), io.BytesIO(data))


def _paths_entry(root: Path, rel: str, placeholder: str | None = None) -> dict[str, object]:
    p = root / rel
    if p.is_symlink():
        return {"_path": rel, "path_type": "softlink", "size_in_bytes": 0}
    data = p.read_bytes()
    entry: dict[str, object] = {"_path": rel, "path_type": "hardlink",
                                "sha256": hashlib.sha256(data).hexdigest(),
                                "size_in_bytes": len(data)}
    if placeholder is not None:
        entry.update(prefix_placeholder=placeholder, file_mode="text")
    return entry


def make_package(channel: Path, subdir: str, name: str, version: str, *,
                 depends: Iterable[str] = (), files: Path | None = None,
                 extra_files: dict[str, str] | None = None, noarch: str | None = None,
                 link: dict[str, object] | None = None, placeholder: str | None = None,
                 text_with_prefix: Iterable[str] = (), build: str = "0") -> Path:
    """Write ``channel/subdir/name-version-build.conda``.

    ``files`` is a folder whose whole tree goes into the package (symlinks kept);
    ``extra_files`` maps relative paths to small text contents; ``text_with_prefix``
    lists paths (inside ``files``) that contain ``placeholder``.
    """
    out = channel / subdir
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="kmtest-pkg-") as tmp:
        root = Path(files) if files is not None else Path(tmp)
        for rel, text in (extra_files or {}).items():
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            (root / rel).write_text(text)
        rels = sorted(str(p.relative_to(root)) for p in root.rglob("*")
                      if p.is_symlink() or p.is_file())
        marked = set(text_with_prefix)
        paths = [_paths_entry(root, r, placeholder if r in marked else None) for r in rels]
        index: dict[str, object] = {
            "name": name, "version": version, "build": build, "build_number": 0,
            "depends": list(depends), "license": "MIT", "subdir": subdir,
            "timestamp": int(time.time() * 1000),
        }
        if noarch:
            index["noarch"] = noarch
        if subdir != "noarch":
            platform, arch = subdir.split("-")
            index["platform"] = platform
            index["arch"] = {"64": "x86_64", "32": "x86", "arm64": "arm64"}.get(arch, arch)
        stem = f"{name}-{version}-{build}"
        with conda_builder(stem, out, compression_level=1) as tar:
            for rel in rels:
                tar.add(str(root / rel), arcname=rel, recursive=False, filter=anonymize)
            _add_bytes(tar, "info/index.json", json.dumps(index, indent=2).encode())
            _add_bytes(tar, "info/paths.json",
                       json.dumps({"paths": paths, "paths_version": 1}, indent=2).encode())
            _add_bytes(tar, "info/files", ("\n".join(rels) + "\n").encode())
            if marked:
                _add_bytes(tar, "info/has_prefix", "".join(
                    f"{placeholder} text {r}\n" for r in sorted(marked)).encode())
            if link:
                _add_bytes(tar, "info/link.json", json.dumps(link).encode())
    return out / f"{stem}.conda"


# --- python, repackaged from the host ---------------------------------------------


def _patchelf() -> str | None:
    found = shutil.which("patchelf")
    if found:
        return found
    cand = Path(sysconfig.get_path("scripts")) / "patchelf"
    return str(cand) if cand.exists() else None


def _stage_python(stage: Path) -> tuple[str, list[str]]:
    """Copy the host interpreter into ``stage``; return (old prefix, text files with it)."""
    src = Path(sys.base_prefix)
    old = str(src)
    if not sysconfig.get_config_var("Py_ENABLE_SHARED"):
        raise RuntimeError(f"{src} is not built --enable-shared; cannot repackage it")
    (stage / "bin").mkdir(parents=True)
    (stage / "lib").mkdir()
    exe = f"python{PY_MM}"
    shutil.copy2(src / "bin" / exe, stage / "bin" / exe)
    for alias in ("python", "python3"):
        (stage / "bin" / alias).symlink_to(exe)
    libname = sysconfig.get_config_var("INSTSONAME")  # libpython3.11.so.1.0
    shutil.copy2(src / "lib" / libname, stage / "lib" / libname)
    (stage / "lib" / f"libpython{PY_MM}.so").symlink_to(libname)
    if (src / "lib" / "libpython3.so").exists():
        shutil.copy2(src / "lib" / "libpython3.so", stage / "lib" / "libpython3.so")

    stdlib_src = src / "lib" / f"python{PY_MM}"
    stdlib = stage / "lib" / f"python{PY_MM}"

    def ignore(folder: str, names: list[str]) -> set[str]:
        rel = Path(folder).relative_to(stdlib_src).as_posix()
        skip = set()
        for n in names:
            path = n if rel == "." else f"{rel}/{n}"
            if n in _SKIP_DIRS or path in _SKIP_DIRS or n.endswith(_SKIP_SUFFIXES):
                skip.add(n)
        return skip

    shutil.copytree(stdlib_src, stdlib, ignore=ignore, symlinks=True)
    (stdlib / "site-packages").mkdir()
    (stdlib / "site-packages" / "README.txt").write_text("third-party packages go here\n")

    pe = _patchelf()
    if pe:
        for binary in (stage / "bin" / exe, stage / "lib" / libname):
            subprocess.run([pe, "--set-rpath", "$ORIGIN/../lib", str(binary)], check=True)
    marked = []
    needle = old.encode()
    for p in sorted(stdlib.rglob("*")):
        if p.is_file() and not p.is_symlink() and p.suffix in (".py", "", ".txt", ".cfg"):
            data = p.read_bytes()
            if needle in data and b"\0" not in data:
                marked.append(str(p.relative_to(stage)))
    return old, marked


def build_python(channel: Path) -> Path:
    with tempfile.TemporaryDirectory(prefix="kmtest-python-") as tmp:
        stage = Path(tmp) / "root"
        stage.mkdir()
        old, marked = _stage_python(stage)
        return make_package(channel, "linux-64", "python", PY_VER, files=stage,
                            placeholder=old, text_with_prefix=marked, build="0_kmtest")


def build_pip(channel: Path) -> Path:
    """pip as a noarch: python package, from ensurepip's bundled wheel."""
    bundled = Path(sys.base_prefix) / "lib" / f"python{PY_MM}" / "ensurepip" / "_bundled"
    wheel = next(bundled.glob("pip-*.whl"))
    version = wheel.name.split("-")[1]
    with tempfile.TemporaryDirectory(prefix="kmtest-pip-") as tmp:
        root = Path(tmp)
        with zipfile.ZipFile(wheel) as zf:
            zf.extractall(root / "site-packages")
        return make_package(
            channel, "noarch", "pip", version, files=root, noarch="python",
            depends=["python >=3.7"], build="py_0",
            link={"noarch": {"type": "python",
                             "entry_points": ["pip = pip._internal.cli.main:main"]},
                  "package_metadata_version": 1})


# --- the channel --------------------------------------------------------------------


def build_channel(dest: Path, *, with_python: bool = True) -> Path:
    """Build the test channel in ``dest`` (created) and return it."""
    dest.mkdir(parents=True, exist_ok=True)
    for sub in SUBDIRS:
        (dest / sub).mkdir(exist_ok=True)
    make_package(dest, "noarch", "kmtest-b", "1.0", noarch="generic",
                 extra_files={"share/kmtest/b.txt": "b 1.0\n"})
    make_package(dest, "noarch", "kmtest-b", "2.0", noarch="generic",
                 extra_files={"share/kmtest/b.txt": "b 2.0\n"})
    make_package(dest, "noarch", "kmtest-a", "1.0", noarch="generic",
                 depends=["kmtest-b >=1.0"], extra_files={"share/kmtest/a.txt": "a 1.0\n"})
    for sub in ("linux-64", "osx-arm64"):
        make_package(dest, sub, "kmtest-c", "0.1", depends=["kmtest-b <2"],
                     extra_files={"share/kmtest/c.txt": f"c for {sub}\n"})
    if with_python:
        build_python(dest)
        build_pip(dest)
    asyncio.run(index_fs(dest, write_zst=False, write_shards=False, force=True))
    return dest


def channel_size(channel: Path) -> int:
    return sum(p.stat().st_size for p in channel.rglob("*") if p.is_file())


if __name__ == "__main__":
    t0 = time.perf_counter()
    where = build_channel(Path(sys.argv[1] if len(sys.argv) > 1 else
                               tempfile.mkdtemp(prefix="kmtest-channel-")))
    print(f"{where}: {channel_size(where) / 1e6:.1f} MB in {time.perf_counter() - t0:.1f} s",
          file=sys.stderr)
