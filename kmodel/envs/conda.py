"""Conda envs through py-rattler: no conda binary needed.

``lock`` solves the spec with rattler for every platform of the spec (default: this one),
pins its ``pip:`` section with ``uv pip compile`` (for the python version rattler chose)
and writes ``envs/NAME.conda-lock.yml`` in conda-lock's v1 format (conda-lock's own models
and writer), so ``conda-lock install`` reads it as well as ``rattler.LockFile.from_path``.
``_build`` installs the conda packages for this platform with ``rattler.install`` and then
the pinned pip packages (by URL, with hashes, no dependency resolution) with the env's own
python.

Channels: names resolve against ``KMODEL_CONDA_CHANNEL_ALIAS``, else the user's conda
``channel_alias``, else rattler's default; URLs (https://, file://) and absolute paths are used as
given. ``KMODEL_CONDA_MIRRORS`` maps channel URLs onto mirrors
("URL=MIRROR[,MIRROR...];URL=..."). Remote channels are probed first with a short timeout
(``KMODEL_CONDA_TIMEOUT``, seconds, default 5) so that an unreachable channel fails within
seconds with ChannelUnreachableError instead of hanging in retries.

A real conda/mamba/micromamba is used only when ``KMODEL_CONDA_EXE`` names it: it then
creates the env from an explicit file rendered from the lock.
"""

from __future__ import annotations

import asyncio
import datetime
import os
import re
import tempfile
import tomllib
import urllib.error
import urllib.parse
import urllib.request
import warnings
from collections.abc import Coroutine, Sequence
from pathlib import Path
from typing import Any, TypeVar

import rattler
import yaml
from rattler import (
    BuildString,
    Channel,
    Client,
    Gateway,
    GenericVirtualPackage,
    MatchSpec,
    PackageName,
    RepoDataRecord,
    Version,
)
from rattler.exceptions import FetchRepoDataError, GatewayError, SolverError
from rattler.networking.middleware import (
    AuthenticationMiddleware,
    MirrorMiddleware,
    RetryMiddleware,
)

from kmodel import _subprocess
from kmodel._fs import home_folder, home_group, kmodel_home, share, share_tree
from kmodel.envs.base import EnvBackend, header, spec_hash, write_lock
from kmodel.envs.pip_sources import uv_environment
from kmodel.envs.uv import check_install, uv_binary
from kmodel.errors import (
    ChannelUnreachableError,
    EnvBuildError,
    LockResolveError,
    ToolMissingError,
)
from kmodel.registry import EnvRef
from kmodel.spec import CondaEnvSpec

T = TypeVar("T")

#: seconds for the reachability probe of a remote channel
DEFAULT_PROBE_TIMEOUT = 5.0
#: seconds for any one repodata or package download (large repodata needs a while)
DOWNLOAD_TIMEOUT = 600

#: the virtual packages a lock is solved against (like conda-lock's defaults), so a
#: lock does not depend on the machine that wrote it
VIRTUAL_PACKAGES: dict[str, list[tuple[str, str, str]]] = {
    "linux": [("__unix", "0", "0"), ("__linux", "5.10", "0"), ("__glibc", "2.17", "0")],
    "osx-64": [("__unix", "0", "0"), ("__osx", "10.15", "0")],
    "osx-arm64": [("__unix", "0", "0"), ("__osx", "11.0", "0")],
    "win": [("__win", "0", "0")],
}
_ARCHSPEC = {"64": "x86_64", "aarch64": "aarch64", "arm64": "arm64", "ppc64le": "ppc64le",
             "32": "x86"}

#: conda subdir -> uv's --python-platform
UV_PLATFORMS = {
    "linux-64": "x86_64-manylinux_2_28",
    "linux-aarch64": "aarch64-manylinux_2_28",
    "osx-64": "x86_64-apple-darwin",
    "osx-arm64": "aarch64-apple-darwin",
    "win-64": "x86_64-pc-windows-msvc",
}


def _run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def current_platform() -> str:
    return str(rattler.Subdir.current())


# --- channels ----------------------------------------------------------------------


def channel_alias() -> str | None:
    """Base URL for channel names: $KMODEL_CONDA_CHANNEL_ALIAS, else the user's own conda
    configuration (``channel_alias`` in $CONDARC or ~/.condarc), else None (rattler's
    default, conda's usual host)."""
    if alias := os.environ.get("KMODEL_CONDA_CHANNEL_ALIAS"):
        return alias.rstrip("/")
    for rc in (os.environ.get("CONDARC"), "~/.condarc", "~/.config/conda/.condarc"):
        path = Path(rc).expanduser() if rc else None
        if path and path.is_file():
            try:
                found = yaml.safe_load(path.read_text()) or {}
            except (OSError, yaml.YAMLError):
                continue
            if isinstance(found, dict) and isinstance(found.get("channel_alias"), str):
                return str(found["channel_alias"]).rstrip("/")
    return None


def channel_url(channel: str) -> str:
    """A channel as a URL: names go through the alias, paths become file:// URLs."""
    if "://" in channel:
        return channel.rstrip("/")
    if channel.startswith(("/", "~", "./", "../")):
        return Path(channel).expanduser().absolute().as_uri()
    if alias := channel_alias():
        return f"{alias}/{channel.strip('/')}"
    return str(rattler.Channel(channel.strip("/")).base_url).rstrip("/")


def mirrors() -> dict[str, list[str]]:
    """``KMODEL_CONDA_MIRRORS="URL=MIRROR[,MIRROR];URL2=..."`` as a mapping."""
    found: dict[str, list[str]] = {}
    for item in os.environ.get("KMODEL_CONDA_MIRRORS", "").split(";"):
        if "=" in item:
            url, _, targets = item.partition("=")
            found[url.strip().rstrip("/") + "/"] = [t.strip().rstrip("/") + "/"
                                                    for t in targets.split(",") if t.strip()]
    return found


def probe_timeout() -> float:
    try:
        return float(os.environ.get("KMODEL_CONDA_TIMEOUT", DEFAULT_PROBE_TIMEOUT))
    except ValueError:
        return DEFAULT_PROBE_TIMEOUT


def check_channel(name: str, url: str, timeout: float | None = None) -> None:
    """Fail fast (ChannelUnreachableError) if ``url`` cannot be a conda channel right now."""
    fix = ("check the URL, your network or proxy, or set KMODEL_CONDA_CHANNEL_ALIAS "
           "to a reachable mirror")
    parsed = urllib.parse.urlparse(url)
    if parsed.scheme == "file":
        folder = Path(urllib.request.url2pathname(parsed.path))
        if not folder.is_dir():
            raise ChannelUnreachableError(f"conda channel {name!r} ({url}): no such folder "
                                          f"{folder}; build or index it first")
        if not any((folder / sub / "repodata.json").is_file()
                   for sub in ("noarch", current_platform())):
            raise ChannelUnreachableError(
                f"conda channel {name!r} ({url}) has no noarch/repodata.json; index it "
                "(rattler.index.index_fs or `conda index`)")
        return
    if parsed.scheme not in ("http", "https"):
        return  # s3://, oci:// ...: let rattler deal with them
    base = url
    for original, targets in mirrors().items():
        if (url + "/").startswith(original) and targets:
            base = targets[0] + (url + "/")[len(original):].rstrip("/")
    probe = f"{base}/noarch/repodata.json"
    req = urllib.request.Request(probe, method="HEAD",
                                 headers={"User-Agent": "kmodel (conda channel probe)"})
    try:
        with urllib.request.urlopen(req, timeout=timeout or probe_timeout()):
            pass
    except urllib.error.HTTPError as e:
        if e.code in (404, 410):
            raise ChannelUnreachableError(
                f"conda channel {name!r} ({url}) not found: {probe} answered {e.code}; "
                "check the channel name") from None
        # 401/403/405...: the server is there; rattler handles authentication itself
    except (urllib.error.URLError, OSError, ValueError) as e:
        reason = getattr(e, "reason", e)
        raise ChannelUnreachableError(
            f"conda channel {name!r} ({url}) is unreachable: {reason}; {fix}") from None


def _client(timeout: int = DOWNLOAD_TIMEOUT) -> Client:
    middlewares: list[Any] = [RetryMiddleware(2), AuthenticationMiddleware()]
    if m := mirrors():
        middlewares.insert(0, MirrorMiddleware(m))
    return Client(middlewares, timeout=timeout)


def _virtual_packages(platform: str) -> list[GenericVirtualPackage]:
    os_name, _, arch = platform.partition("-")
    specs = VIRTUAL_PACKAGES.get(platform) or VIRTUAL_PACKAGES.get(os_name, [])
    specs = [*specs, ("__archspec", "1", _ARCHSPEC.get(arch, arch))]
    return [GenericVirtualPackage(PackageName(n), Version(v), BuildString(b))
            for n, v, b in specs]


# --- pip section -------------------------------------------------------------------


def _python_version(records: Sequence[RepoDataRecord]) -> str | None:
    for r in records:
        if r.name.normalized == "python":
            v = str(r.version).split(".")
            return ".".join(v[:2])
    return None


def _pip_lock(ref: EnvRef[CondaEnvSpec], pip_deps: list[str], python: str, platform: str
              ) -> list[dict[str, Any]]:
    """Pin the pip section for one platform: [{name, version, url, sha256}]."""
    uv = uv_binary()
    if uv is None:
        raise ToolMissingError(f"env {ref.name!r} has a pip: section, which needs uv to "
                               "lock it; `pip install uv` or unset KMODEL_NO_UV")
    target = UV_PLATFORMS.get(platform)
    if target is None:
        raise LockResolveError(f"env {ref.name!r}: cannot lock its pip: section for "
                               f"platform {platform} (known: {', '.join(UV_PLATFORMS)})")
    with tempfile.TemporaryDirectory(prefix="kmodel-pip-lock-") as tmp:
        req = Path(tmp) / "requirements.in"
        req.write_text("\n".join(pip_deps) + "\n")
        out = Path(tmp) / "pylock.toml"
        _subprocess.run(
            [uv, "pip", "compile", "--quiet", "--generate-hashes", "--no-header",
             "--python-version", python, "--python-platform", target,
             "--format", "pylock.toml", req, "-o", out],
            env=uv_environment(),
            error=lambda tail: LockResolveError(
                f"cannot lock the pip: section of env {ref.name!r} ({ref.path}) for "
                f"{platform}: {tail}"))
        data = tomllib.loads(out.read_text())
    pins = []
    for pkg in data.get("packages", []):
        # a wheel if there is one for this platform, else the sdist
        art = (pkg.get("wheels") or [None])[0] or pkg.get("sdist") or pkg.get("archive")
        if not art or "sha256" not in art.get("hashes", {}):
            raise LockResolveError(f"env {ref.name!r}: pip package {pkg.get('name')!r} has "
                                   "no hashed wheel or sdist (VCS and local folders cannot "
                                   "be locked); use a released version")
        url = art.get("url") or Path(art["path"]).absolute().as_uri()
        pins.append({"name": pkg["name"].lower(), "version": str(pkg["version"]),
                     "url": url, "sha256": art["hashes"]["sha256"]})
    return pins


# --- the lockfile ------------------------------------------------------------------


def _dependencies(depends: Sequence[str]) -> dict[str, str]:
    deps: dict[str, str] = {}
    for d in depends:
        name, _, rest = d.strip().partition(" ")
        deps[name] = rest.strip() or "*"
    return deps


def _write_lockfile(ref: EnvRef[CondaEnvSpec], channels: list[str], platforms: list[str],
                    solved: dict[str, list[RepoDataRecord]],
                    pins: dict[str, list[dict[str, Any]]]) -> None:
    with warnings.catch_warnings():  # conda_lock's vendored conda warns on import
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", PendingDeprecationWarning)
        from conda_lock.lockfile import write_conda_lock_file
        from conda_lock.lockfile.v1.models import HashModel
        from conda_lock.lockfile.v2prelim.models import LockedDependency, Lockfile, LockMeta

    packages = []
    for platform in platforms:
        for r in solved[platform]:
            packages.append(LockedDependency(
                name=r.name.normalized, version=str(r.version), manager="conda",
                platform=platform, dependencies=_dependencies(r.depends), url=r.url,
                hash=HashModel(md5=r.md5.hex() if r.md5 else None,
                               sha256=r.sha256.hex() if r.sha256 else None),
                build=str(r.build), categories={"main"}))
        for p in pins.get(platform, []):
            packages.append(LockedDependency(
                name=p["name"], version=p["version"], manager="pip", platform=platform,
                dependencies={}, url=p["url"], hash=HashModel(sha256=p["sha256"]),
                categories={"main"}))
    meta = LockMeta(
        content_hash={p: spec_hash(ref) for p in platforms},
        channels=channels,  # the model's validator turns URLs into Channel objects
        platforms=platforms, sources=[ref.path.name])  # no timestamp: same solve, same file
    lock = Lockfile(package=packages, metadata=meta)
    with tempfile.TemporaryDirectory(prefix="kmodel-conda-lock-") as tmp:
        out = Path(tmp) / ref.lockfile.name
        write_conda_lock_file(lock, out, metadata_choices=None, include_help_text=True)
        body = out.read_text(encoding="utf-8")
    write_lock(ref, header(ref, "py-rattler") + body)


# --- the backend -------------------------------------------------------------------


class CondaBackend(EnvBackend[CondaEnvSpec]):
    name = "conda"

    def __init__(self, *, cache_dir: Path | None = None) -> None:
        self._cache_dir = cache_dir

    @property
    def cache_dir(self) -> Path:
        """rattler's repodata and package cache (shared by all kmodel conda envs)."""
        return self._cache_dir or home_folder("conda-cache")

    def _share_cache(self) -> None:
        """rattler makes its cache's folders and lock files (``pkgs/*.lock``, which it
        opens to write) with this user's umask: in a group's KMODEL_HOME, the group's."""
        cache = self.cache_dir
        if (group := home_group()) is None or not cache.is_relative_to(kmodel_home()):
            return
        share_tree(cache, group)
        for lock in [*cache.glob("*/*.lock"), *cache.glob("*/.*.lock")]:
            share(lock, group, writable=True)

    # -- lock -----------------------------------------------------------------------

    def lock(self, ref: EnvRef[CondaEnvSpec]) -> Path:
        spec = ref.spec
        platforms = list(spec.platforms) or [current_platform()]
        names = list(spec.channels) or ["conda-forge"]
        urls = [channel_url(c) for c in names]
        for n, u in zip(names, urls, strict=True):
            check_channel(n, u)
        if not spec.conda_deps:
            raise LockResolveError(f"env {ref.name!r} ({ref.path}) lists no conda "
                                   "dependencies; add at least python")
        try:
            specs = [MatchSpec(d) for d in spec.conda_deps]
        except Exception as e:  # rattler's InvalidMatchSpecError
            raise LockResolveError(f"env {ref.name!r} ({ref.path}): {e}") from None
        gateway = Gateway(cache_dir=self.cache_dir / "repodata", client=_client())
        channels = [Channel(u) for u in urls]  # full URLs: no alias needed
        solved: dict[str, list[RepoDataRecord]] = {}
        pins: dict[str, list[dict[str, Any]]] = {}
        for platform in platforms:
            solved[platform] = self._solve(ref, names, channels, specs, gateway, platform)
            self._share_cache()
            if spec.pip_deps:
                python = _python_version(solved[platform])
                if python is None:
                    raise LockResolveError(f"env {ref.name!r} ({ref.path}) has a pip: "
                                           "section but no python in its dependencies; "
                                           "add python")
                pins[platform] = _pip_lock(ref, spec.pip_deps, python, platform)
        _write_lockfile(ref, urls, platforms, solved, pins)
        return ref.lockfile

    def _solve(self, ref: EnvRef[CondaEnvSpec], names: list[str], channels: list[Channel],
               specs: list[MatchSpec], gateway: Gateway, platform: str
               ) -> list[RepoDataRecord]:
        try:
            records = _run(rattler.solve(
                channels, specs, gateway=gateway,
                platforms=[rattler.Subdir(platform), rattler.Subdir("noarch")],
                virtual_packages=_virtual_packages(platform),
                timeout=datetime.timedelta(minutes=5)))
        except (FetchRepoDataError, GatewayError) as e:
            raise ChannelUnreachableError(
                f"cannot read conda channel(s) {', '.join(names)} for {platform}: "
                f"{_first_line(e)}") from None
        except SolverError as e:
            raise LockResolveError(f"cannot lock env {ref.name!r} ({ref.path}) for "
                                   f"{platform}: {e}") from None
        return sorted(records, key=lambda r: r.name.normalized)

    # -- build ----------------------------------------------------------------------

    def _locked(self, ref: EnvRef[CondaEnvSpec]
                ) -> tuple[list[RepoDataRecord], list[tuple[str, str]]]:
        """This platform's conda records and pip (url, sha256) pairs from the lock."""
        platform = current_platform()
        try:
            lock = rattler.LockFile.from_path(ref.lockfile)
        except Exception as e:  # rattler's ParseCondaLockError and friends
            raise EnvBuildError(f"cannot read {ref.lockfile}: {_first_line(e)}; "
                                f"run `kmodel env lock {ref.name}`") from None
        env = lock.default_environment()
        plat = next((p for p in (env.platforms() if env else []) if str(p) == platform),
                    None)
        if env is None or plat is None:
            raise EnvBuildError(f"{ref.lockfile} has no packages for {platform}; add it "
                                f"to platforms: in {ref.path} and run "
                                f"`kmodel env lock {ref.name}`")
        records = env.conda_repodata_records_for_platform(plat) or []
        pip = [(p.location, p.hashes.sha256.hex() if p.hashes and p.hashes.sha256 else "")
               for p in env.pypi_packages_for_platform(plat) or []]
        return records, pip

    def _build(self, ref: EnvRef[CondaEnvSpec], prefix: Path) -> None:
        records, pip = self._locked(ref)
        exe = os.environ.get("KMODEL_CONDA_EXE")
        if exe:
            self._build_with_exe(ref, prefix, exe, records)
        else:
            try:
                _run(rattler.install(records, prefix, cache_dir=self.cache_dir / "pkgs",
                                     show_progress=False, client=_client()))
            except Exception as e:  # rattler's InstallerError, TransactionError, ...
                raise EnvBuildError(f"cannot build env {ref.name!r}: "
                                    f"{_first_line(e)}") from None
            finally:
                self._share_cache()
        if pip:
            self._install_pip(ref, prefix, pip)

    def _build_with_exe(self, ref: EnvRef[CondaEnvSpec], prefix: Path, exe: str,
                        records: list[RepoDataRecord]) -> None:
        lines = ["@EXPLICIT"] + [f"{r.url}#{r.md5.hex()}" if r.md5 else r.url
                                 for r in records]
        with tempfile.TemporaryDirectory(prefix="kmodel-explicit-") as tmp:
            explicit = Path(tmp) / "explicit.txt"
            explicit.write_text("\n".join(lines) + "\n")
            _subprocess.run([exe, "create", "--yes", "--prefix", prefix, "--file", explicit],
                            error=lambda tail: EnvBuildError(
                                f"cannot build env {ref.name!r} with {exe}: {tail}"))

    def _install_pip(self, ref: EnvRef[CondaEnvSpec], prefix: Path,
                     pip: list[tuple[str, str]]) -> None:
        python = prefix / "bin" / "python"
        if not python.exists():
            raise EnvBuildError(f"env {ref.name!r} has a pip: section but no python; "
                                f"add python to the dependencies in {ref.path}")
        fail = lambda tail: EnvBuildError(  # noqa: E731
            f"cannot install the pip: packages of env {ref.name!r}: {tail}")
        with tempfile.TemporaryDirectory(prefix="kmodel-pip-") as tmp:
            req = Path(tmp) / "requirements.txt"
            req.write_text("".join(f"{_req_name(url)} @ {url} --hash=sha256:{sha}\n"
                                   for url, sha in pip))
            uv = uv_binary()
            if uv:
                proc = _subprocess.run([uv, "pip", "install", "--quiet", "--no-deps",
                                        "--require-hashes", "--python", python, "-r", req],
                                       env=uv_environment())
            else:
                proc = _subprocess.run([python, "-m", "pip", "install", "--quiet",
                                        "--no-deps", "--require-hashes", "-r", req])
            check_install(ref, proc, fail)


def _req_name(url: str) -> str:
    """The project name in a wheel or sdist file name (PEP 427 / 625)."""
    fname = urllib.parse.unquote(url.rsplit("/", 1)[-1])
    if fname.endswith(".whl"):
        return fname.split("-")[0]
    return re.sub(r"-[0-9].*$", "", re.sub(r"\.(tar\.gz|zip|tar\.bz2)$", "", fname))


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


__all__ = ["CondaBackend", "channel_url", "check_channel", "current_platform"]
