"""A KMODEL_HOME shared by a group, used by two real users (made with useradd, removed at
the end): one key for one env whatever path each user reaches the interpreter by, folders
the group can write whatever the umask of the user who made them, and an `env gc` that
never removes a build another user's lock names.

Both users run kmodel from venvs of their own (this checkout's package copied in), made by
root from the system's python3.11: user A's from /usr/bin/python3.11, user B's from a hard
link of it at another path (as another mount of one interpreter would be).
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
import shutil
import stat
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SYSTEM_PYTHON = Path("/usr/bin/python3.11")
#: what kmodel needs to lock, build, predict and collect garbage with pip envs
DEPENDENCIES = ("click", "pydantic", "pyyaml", "ruamel.yaml", "numpy", "h5py", "filelock",
                "uv")

def _why_not() -> str | None:
    from kmodel.envs.uv import uv_binary

    if os.geteuid() != 0:
        return "needs root, to make two users with useradd"
    if not all(shutil.which(t) for t in ("useradd", "userdel", "groupadd", "groupdel")):
        return "needs useradd, userdel, groupadd and groupdel"
    if not SYSTEM_PYTHON.is_file():
        return f"needs {SYSTEM_PYTHON}, an interpreter the test users can run"
    if uv_binary() is None:
        return "needs uv, to make the users' venvs"
    return None


@dataclass
class User:
    name: str
    uid: int
    home: Path
    python: Path  # the venv kmodel runs from
    umask: int


@dataclass
class Team:
    base: Path
    gid: int
    home: Path  # the group's KMODEL_HOME
    project: Path  # the group's project: model_specs/mlp, envs/numpy2.{yaml,lock}
    a: User
    b: User
    env: dict[str, str]

    def run(self, user: User, *args: str, cwd: Path | None = None,
            home: Path | None = None) -> subprocess.CompletedProcess[str]:
        """``python -m kmodel ARGS`` as ``user``, in the group, with its umask (and
        KMODEL_HOME=``home`` if given)."""
        t0 = time.perf_counter()
        env = {**self.env, "HOME": str(user.home)} | ({"KMODEL_HOME": str(home)} if home else {})
        res = subprocess.run([str(user.python), "-m", "kmodel", *args], cwd=cwd or self.project,
                             env=env, user=user.uid,
                             group=self.gid, extra_groups=[], umask=user.umask,
                             capture_output=True, text=True, timeout=300)
        print(f"{user.name}: kmodel {' '.join(args)}: {time.perf_counter() - t0:.1f} s")
        return res

    def ok(self, user: User, *args: str, cwd: Path | None = None) -> str:
        res = self.run(user, *args, cwd=cwd)
        assert res.returncode == 0, (user.name, args, res.stdout, res.stderr)
        return res.stdout + res.stderr


def _sh(*cmd: str | Path) -> None:
    subprocess.run([str(c) for c in cmd], check=True, capture_output=True, timeout=120)


def _venv(python: Path, folder: Path) -> Path:
    """A venv of ``python`` with kmodel's dependencies (the versions installed here, from
    uv's cache) and this checkout's kmodel package, readable by everyone."""
    from kmodel.envs.pip_sources import uv_environment
    from kmodel.envs.uv import uv_binary

    uv, env = str(uv_binary()), uv_environment()
    subprocess.run([uv, "venv", "--quiet", "--seed", "--python", str(python), str(folder)],
                   check=True, env=env, timeout=120)
    pins = [f"{d}=={importlib.metadata.version(d)}" for d in DEPENDENCIES]
    subprocess.run([uv, "pip", "install", "--quiet", "--python", str(folder / "bin/python"),
                    *pins], check=True, env=env, timeout=300)
    site = next((folder / "lib").glob("python3*/site-packages"))
    shutil.copytree(REPO / "kmodel", site / "kmodel",
                    ignore=shutil.ignore_patterns("__pycache__"))
    return folder / "bin" / "python"


@contextlib.contextmanager
def _team() -> Iterator[Team]:
    tag = os.urandom(3).hex()
    group, names = f"kmg{tag}", (f"kma{tag}", f"kmb{tag}")
    base = Path(tempfile.mkdtemp(prefix="kmodel-team-"))
    made: list[str] = []
    try:
        base.chmod(0o755)
        t0 = time.perf_counter()
        try:
            _sh("groupadd", group)
            made.append("group")
            for name in names:
                _sh("useradd", "-M", "-N", "-g", group, "-d", base / name, "-s", "/bin/sh",
                    name)
                made.append(name)
        except subprocess.CalledProcessError as e:
            pytest.skip(f"cannot make test users: {e.stderr.decode(errors='replace')}")
        import grp
        import pwd

        gid = grp.getgrnam(group).gr_gid
        users = []
        for name, python, umask in ((names[0], SYSTEM_PYTHON, 0o022),
                                    (names[1], base / "py" / "bin" / "python3.11", 0o002)):
            home = base / name
            home.mkdir(mode=0o700)
            uid = pwd.getpwnam(name).pw_uid
            os.chown(home, uid, gid)
            users.append(User(name, uid, home, python, umask))
        (base / "py" / "bin").mkdir(parents=True)
        try:  # user B's interpreter: the same one, reached by another path
            os.link(SYSTEM_PYTHON, users[1].python)
        except OSError:
            shutil.copy2(SYSTEM_PYTHON, users[1].python)
        for user, folder in zip(users, ("venv-a", "venv-b"), strict=True):
            user.python = _venv(user.python, base / folder)
        print(f"users and venvs: {time.perf_counter() - t0:.1f} s")
        home = base / "kmodel-home"
        home.mkdir()
        os.chown(home, 0, gid)
        home.chmod(0o2775)  # a group's home: setgid, group-writable
        project = base / "project"
        (project / "envs").mkdir(parents=True)
        for name in ("numpy2.yaml", "numpy2.lock"):
            shutil.copy(REPO / "envs" / name, project / "envs" / name)
        shutil.copytree(REPO / "model_specs" / "mlp", project / "model_specs" / "mlp",
                        ignore=shutil.ignore_patterns("__pycache__"))
        from kmodel.envs.pip_sources import pip_config

        env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "KMODEL_HOME": str(home)}
        env |= {k: v for k, v in os.environ.items()  # the same package sources as root's
                if k.startswith(("PIP_", "UV_", "SSL_CERT_"))}
        env |= {f"PIP_{k.upper().replace('-', '_')}": v for k, v in pip_config().items()}
        yield Team(base, gid, home, project, users[0], users[1], env)
    finally:
        for name in reversed(made):
            subprocess.run(["groupdel" if name == "group" else "userdel", group
                            if name == "group" else name], capture_output=True, timeout=60)
        shutil.rmtree(base, ignore_errors=True)


def _shared(path: Path, gid: int) -> bool:
    st = path.lstat()
    return bool(st.st_mode & stat.S_IWGRP and st.st_mode & stat.S_ISGID) and st.st_gid == gid


def test_what_kmodel_makes_in_a_group_home_is_the_groups(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Under umask 022 (and 077): folders g+rwx and setgid, files group-readable, lock
    files group-writable; in a home of one user, nothing changes."""
    from kmodel import _lock
    from kmodel._fs import cached_sha256, home_folder, share_tree

    data = tmp_path / "data.bin"
    data.write_bytes(b"x" * 1000)
    for umask in (0o022, 0o077):
        home = tmp_path / f"home-{umask:o}"
        home.mkdir()
        home.chmod(0o2775)
        monkeypatch.setenv("KMODEL_HOME", str(home))
        old = os.umask(umask)
        try:
            builds = home_folder("envs", ".builds")
            cached_sha256(data)
            with _lock.held(home / "envs" / "x.lock", RuntimeError):
                lock_mode = stat.S_IMODE((home / "envs" / "x.lock").stat().st_mode)
            tree = builds / "b"
            (tree / "bin").mkdir(parents=True)
            (tree / "bin" / "python").write_text("")
            (tree / "bin" / "python").chmod(0o700)
            (tree / "marker").write_text("{}")
            share_tree(tree)
        finally:
            os.umask(old)
        for folder in (home / "envs", builds, home / "hash-cache", tree, tree / "bin"):
            assert stat.S_IMODE(folder.stat().st_mode) & 0o2070 == 0o2070, (umask, folder)
        assert lock_mode & 0o060 == 0o060, oct(lock_mode)
        assert stat.S_IMODE((tree / "bin" / "python").stat().st_mode) & 0o070 == 0o050
        assert stat.S_IMODE((tree / "marker").stat().st_mode) & 0o070 == 0o040
        (entry,) = (home / "hash-cache").iterdir()  # replaced atomically: readable is enough
        assert stat.S_IMODE(entry.stat().st_mode) & 0o640 == 0o640
    mine = tmp_path / "mine"
    mine.mkdir()
    mine.chmod(0o755)
    monkeypatch.setenv("KMODEL_HOME", str(mine))
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(home_folder("bundles").stat().st_mode) == 0o777 & ~umask


@pytest.mark.slow  # two venvs, one env downloaded and built: ~25 s
def test_a_group_shares_one_home_its_envs_and_its_garbage() -> None:
    if why := _why_not():
        pytest.skip(why)
    t_start = time.perf_counter()
    with _team() as team:
        a, b, home = team.a, team.b, team.home
        # B's interpreter is reached by another path than A's
        base_of = "import sys; print(sys._base_executable)"
        paths = [subprocess.run([str(u.python), "-c", base_of], capture_output=True,
                                text=True, check=True).stdout.strip() for u in (a, b)]
        assert paths[0] == str(SYSTEM_PYTHON) and paths[1] != paths[0], paths

        # A (umask 022) builds the env and predicts: the folders it makes are the group's
        built = team.ok(a, "env", "create", "mlp")
        assert "creating env numpy2" in built
        team.ok(a, "predict", "mlp", "-i", "model_specs/mlp/example/in.h5", "-o",
                str(a.home / "a.h5"))
        envs = home / "envs"
        (link,) = [p for p in envs.iterdir() if p.is_symlink()]
        build = link.resolve()
        for folder in (envs, envs / ".builds", build, build / "bin", home / "hash-cache",
                       home / "spec-cache"):
            assert _shared(folder, team.gid), (folder, oct(folder.stat().st_mode))
            assert folder.stat().st_uid == a.uid
        probe = ("import os, sys; from pathlib import Path; from kmodel import _lock; "
                 "p = Path(os.environ['KMODEL_HOME'], 'envs', 'probe.lock')\n"
                 "with _lock.held(p, RuntimeError): print(oct(os.stat(p).st_mode & 0o777))")
        res = subprocess.run([str(a.python), "-c", probe], env={**team.env, "HOME": str(a.home)},
                             user=a.uid, group=team.gid, extra_groups=[], umask=a.umask,
                             capture_output=True, text=True, timeout=60, cwd=a.home)
        assert res.stdout.strip() == "0o664", res.stderr  # the group may read and break it

        # A's own project, in A's private home, names a second build
        private = a.home / "proj" / "envs"
        private.mkdir(parents=True)
        for name in ("numpy2.yaml", "numpy2.lock"):
            shutil.copy(team.project / "envs" / name, private / name)
        with open(private / "numpy2.lock", "a") as f:
            f.write("# A's own copy\n")
        subprocess.run(["chown", "-R", f"{a.uid}:{team.gid}", str(a.home / "proj")], check=True)
        team.ok(a, "--envs", str(private), "env", "create", "numpy2", cwd=a.home)
        builds = sorted((envs / ".builds").iterdir())
        assert len(builds) == 2

        # B (umask 002, another path to the interpreter) finds A's env: no rebuild
        assert team.ok(b, "env", "path", "mlp").strip() == str(link)
        mine = b.home / "in.h5"
        shutil.copy(team.project / "model_specs/mlp/example/in.h5", mine)
        os.chown(mine, b.uid, team.gid)
        out = team.ok(b, "predict", "mlp", "-i", str(mine), "-o", str(b.home / "b.h5"))
        assert "creating env" not in out, out
        assert sorted((envs / ".builds").iterdir()) == builds
        # ... and writes into the folders A made: hash-cache and spec-cache entries
        assert any(p.stat().st_uid == b.uid for p in (home / "hash-cache").iterdir())
        spec = b.home / "envs" / "numpy2.yaml"
        spec.parent.mkdir()
        spec.write_text((team.project / "envs/numpy2.yaml").read_text() + "# B's\n")
        for path in (spec.parent, spec):
            os.chown(path, b.uid, team.gid)
        team.ok(b, "validate", str(spec))
        assert any(p.stat().st_uid == b.uid for p in (home / "spec-cache").iterdir())

        # B's gc keeps both of A's builds: one its own lock names, one a lock it cannot read
        for flags in (["--dry-run"], []):
            out = team.ok(b, "env", "gc", *flags)
            assert "removed" not in out and "would remove" not in out, out
            assert "cannot be read by this user" in out and "kept" in out, out
        assert sorted((envs / ".builds").iterdir()) == builds
        assert team.ok(a, "--envs", str(private), "env", "path", "numpy2", cwd=a.home)

        # once A's project is gone (and B can see that it is), B collects A's build whole
        shutil.rmtree(a.home / "proj")
        a.home.chmod(0o755)
        out = team.ok(b, "env", "gc")
        assert "removed" in out and "is gone" in out, out
        left = sorted((envs / ".builds").iterdir())
        assert left == [build] and link.resolve() == build, left
        out = team.ok(b, "predict", "mlp", "-i", str(mine), "-o", str(b.home / "b2.h5"))
        assert "creating env" not in out

        # where B cannot write, the error names the folder, its owner and the fix
        (envs / ".builds").chmod(0o2755)  # as a kmodel that did not share it left it
        theirs = b.home / "own"
        theirs.mkdir()
        for name in ("numpy2.yaml", "numpy2.lock"):
            shutil.copy(team.project / "envs" / name, theirs / name)
        with open(theirs / "numpy2.lock", "a") as f:
            f.write("# B's own copy\n")
        res = team.run(b, "--envs", str(theirs), "env", "create", "numpy2", cwd=b.home)
        line = res.stderr.strip().splitlines()[-1]
        assert line.startswith(f"Error [KM207]: KMODEL_HOME {home} is not writable (you "
                               f"cannot write {envs / '.builds'}: mode 2755, owner {a.name})"), line
        assert f"{a.name} can run `chmod -R g+w {envs / '.builds'}`" in line, line
        readonly = team.base / "read-only home"
        readonly.mkdir(mode=0o555)
        res = team.run(b, "predict", "mlp", "-i", str(mine), "-o", str(b.home / "b3.h5"),
                       home=readonly)
        line = res.stderr.strip().splitlines()[-1]
        assert line.startswith(f"Error [KM207]: KMODEL_HOME {readonly} is not writable (you "
                               f"cannot write {readonly}: mode 555, owner root)"), line
        assert "set KMODEL_HOME to a folder you can write" in line, line
    print(f"whole test: {time.perf_counter() - t_start:.1f} s")
