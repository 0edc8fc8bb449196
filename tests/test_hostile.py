"""Hostile users: paths that alias inputs, booby-trapped temp names, malformed HDF5 and
YAML, FIFOs, /dev/zero, alias bombs, absurd names, shell metacharacters.

Every case is held to one contract (``assert_contract``):

* exit status 1 (2 only for usage errors), with exactly one ``Error [KMnnn]: message``
  line on stderr whose message names the offending file or field;
* no ``Traceback`` on stdout or stderr, and no uncaught exception in-process;
* no user file modified, deleted or re-moded (sha256 + mode of everything in the project
  folder, before and after), and nothing new left behind: no output, no ``*.partial``,
  no temp file, no ``pwned``.

A few cases may instead succeed (``success=``): then the output must be correct and
still nothing else may change. Cheap cases run in-process through click's CliRunner;
cases that could hang or blow up memory run ``python -m kmodel`` in a subprocess under
a timeout and an address-space limit. Cases that would start a model's env if the
refusal were missing are marked slow.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import re
import resource
import signal
import stat
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from kmodel.cli import cli

from .conftest import TOY_SPEC, make_input

ROWS = 20
IDS = [f"r{i}" for i in range(ROWS)]
MEMORY = 2 << 30  # address-space limit of subprocess cases (bounded memory)
TOY = "model_specs/toy/model.yaml"


# --- running kmodel ------------------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    code: int
    stdout: str
    stderr: str
    exception: BaseException | None = None


def invoke(*args: str) -> Outcome:
    """In-process, through click's test runner."""
    r = CliRunner().invoke(cli, list(args))
    return Outcome(r.exit_code, r.stdout, r.stderr, r.exception)


#: seconds after which a command counts as hung: a guard against hangs, never a speed test
#: (a busy machine takes longer; how fast kmodel refuses a bomb is a benchmark's business)
HANG = 180


def spawn(*args: str, timeout: float = HANG, memory: int | None = MEMORY) -> Outcome:
    """``python -m kmodel`` with a timeout (a hang fails the test) and a memory limit."""

    def limit() -> None:
        if memory:
            resource.setrlimit(resource.RLIMIT_AS, (memory, memory))

    proc = subprocess.Popen([sys.executable, "-m", "kmodel", *args], stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            errors="replace", start_new_session=True, preexec_fn=limit)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # its own session: kmodel and what it started
        proc.communicate()
    else:
        return Outcome(proc.returncode, out, err)
    pytest.fail(f"`kmodel {' '.join(args)[:200]}` still running after {timeout} s (hang)")


# --- the contract ----------------------------------------------------------------------

Snapshot = dict[str, tuple[str, int]]  # relative path -> (sha256 | kind, mode)


def snapshot(root: Path) -> Snapshot:
    """Content and mode of everything under ``root``; never opens FIFOs or follows links."""
    home = Path(os.environ.get("KMODEL_HOME", "/nonexistent")).resolve()
    snap: Snapshot = {".": ("dir", os.lstat(root).st_mode)}
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        dirnames[:] = [d for d in dirnames
                       if d != "__pycache__" and (here / d).resolve() != home]
        for name in dirnames + filenames:
            p = here / name
            st_ = os.lstat(p)
            if stat.S_ISLNK(st_.st_mode):
                kind = "link:" + os.readlink(p)
            elif stat.S_ISDIR(st_.st_mode):
                kind = "dir"
            elif stat.S_ISREG(st_.st_mode):
                try:
                    kind = hashlib.sha256(p.read_bytes()).hexdigest()
                except PermissionError:
                    kind = "unreadable"
            else:
                kind = "special"
            snap[p.relative_to(root).as_posix()] = (kind, st_.st_mode)
    return snap


def changes(before: Snapshot, after: Snapshot, allowed: Sequence[str] = ()) -> list[str]:
    """Paths created, deleted, modified or re-moded, except those matching ``allowed``."""
    out = []
    for path in sorted(set(before) | set(after)):
        if any(fnmatch.fnmatch(path, pat) for pat in allowed):
            continue
        if path not in after:
            out.append(f"deleted {path}")
        elif path not in before:
            out.append(f"created {path[:80]}")
        elif before[path] != after[path]:
            out.append(f"modified {path}")
    return out


def assert_contract(out: Outcome, before: Snapshot, root: Path, *, codes: Sequence[str],
                    names: Sequence[str], exit_code: int = 1,
                    success: Callable[[Path], None] | None = None,
                    allowed: Sequence[str] = (), new_on_success: Sequence[str] = ()) -> None:
    """A clean refusal (or, where ``success`` is given, a correct success), nothing touched.

    ``codes`` are accepted code prefixes ("KM402", or "KM6" for any KM6xx); ``names`` the
    file or field names one of which the message must contain; ``allowed`` paths (globs)
    may change either way; ``new_on_success`` paths may appear when the command succeeds.
    """
    shown = f"exit {out.code}\n--- stdout\n{out.stdout[-1500:]}\n--- stderr\n{out.stderr[-1500:]}"
    assert "Traceback" not in out.stdout + out.stderr, f"traceback leaked:\n{shown}"
    assert out.exception is None or isinstance(out.exception, SystemExit), \
        f"uncaught {out.exception!r}\n{shown}"
    assert not [p for p in root.rglob("pwned*") if p.name == "pwned"], "a shell command ran"
    after = snapshot(root)
    if success is not None and out.code == 0:
        success(root)
        assert not changes(before, after, [*allowed, *new_on_success]), \
            f"succeeded but changed {changes(before, after, [*allowed, *new_on_success])}"
        return
    assert out.code == exit_code, f"expected exit {exit_code}:\n{shown}"
    errors = [ln for ln in out.stderr.splitlines() if ln.startswith("Error [KM")]
    assert len(errors) == 1, f"expected one `Error [KM...]` line:\n{shown}"
    m = re.fullmatch(r"Error \[(KM\d{3})\]: (.+)", errors[0])
    assert m, f"malformed error line {errors[0]!r}"
    assert m.group(1).startswith(tuple(codes)), f"expected {'/'.join(codes)}:\n{shown}"
    assert any(n in m.group(2) for n in names), f"message names none of {list(names)}:\n{shown}"
    assert not changes(before, after, allowed), f"files touched: {changes(before, after, allowed)}"


# --- files -------------------------------------------------------------------------------


def ids_array(ids: Sequence[Any]) -> np.ndarray:
    arr = np.asarray(ids)
    return arr.astype(np.int64) if arr.dtype.kind in "iu" else np.char.encode(arr.astype(str))


def raw_h5(path: Path, entries: dict[str, Any], attrs: dict[str, Any] | None = None) -> None:
    """An HDF5 file of exactly these datasets (or h5py links), whatever kmodel thinks."""
    with h5py.File(path, "w") as f:
        for k, v in (attrs or {}).items():
            f.attrs[k] = v
        for name, value in entries.items():
            f[name] = value


def preds_h5(path: Path, ids: Sequence[Any], proba: Any, model: str) -> None:
    raw_h5(path, {"preds/proba": np.asarray(proba, np.float32), "metadata/id": ids_array(ids)},
           {"model": model, "input_sha256": "0" * 64, "schema_version": 1})


def targets_h5(path: Path, ids: Sequence[Any], y: Any) -> None:
    raw_h5(path, {"targets/y": np.asarray(y), "metadata/id": ids_array(ids)})


def stacker_weights(folder: Path, sources: list[str]) -> None:
    """What `kmodel compose train stacker` writes, made by hand."""
    folder.mkdir()
    np.save(folder / "stacker-coef-0.npy", np.ones(len(sources)))
    np.save(folder / "stacker-intercept-0.npy", np.zeros(1))
    (folder / "params.json").write_text(json.dumps({"weights": ["stacker-coef-0",
                                                                "stacker-intercept-0"]}))
    (folder / "sources.json").write_text(json.dumps(sources, indent=2) + "\n")
    hashes = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.iterdir()}
    (folder / "hashes.json").write_text(json.dumps(hashes, indent=2, sort_keys=True) + "\n")


def _set_attr(path: Path, key: str, value: Any) -> None:
    with h5py.File(path, "r+") as f:
        f.attrs[key] = value


def labels() -> np.ndarray:
    return np.arange(ROWS) % 2


def base_files(p: Path) -> None:
    """Valid files every case starts from: in.h5 (with targets), a.h5 and b.h5 (two base
    models' predictions), t.h5 (targets) and W/ (stacker weights trained on m1, m2)."""
    rng = np.random.default_rng(0)
    make_input(p / "in.h5", rows=ROWS, targets=labels().astype(np.float32))
    preds_h5(p / "a.h5", IDS, rng.uniform(0.05, 0.95, ROWS), "m1")
    preds_h5(p / "b.h5", IDS, rng.uniform(0.05, 0.95, ROWS), "m2")
    targets_h5(p / "t.h5", IDS, labels())
    stacker_weights(p / "W", ["m1:proba", "m2:proba"])


# --- case preparations --------------------------------------------------------------------

Prep = Callable[[Path], None]


def symlink(name: str, target: str) -> Prep:
    return lambda p: (p / name).symlink_to(target)


def hardlink(name: str, target: str) -> Prep:
    return lambda p: os.link(p / target, p / name)


def mkdir(name: str, mode: int = 0o755, files: Sequence[str] = ()) -> Prep:
    def prep(p: Path) -> None:
        (p / name).mkdir(parents=True)
        for f in files:
            (p / name / f).write_text(f"precious {f}\n")
        os.chmod(p / name, mode)
    return prep


def move(src: str, dst: str) -> Prep:
    def prep(p: Path) -> None:
        (p / dst).parent.mkdir(parents=True, exist_ok=True)
        (p / src).rename(p / dst)
    return prep


def fifo(name: str) -> Prep:
    def prep(p: Path) -> None:
        if (p / name).exists():
            (p / name).unlink()
        os.mkfifo(p / name)
    return prep


def write(name: str, data: str | bytes) -> Prep:
    def prep(p: Path) -> None:
        (p / name).write_bytes(data.encode() if isinstance(data, str) else data)
    return prep


def h5(name: str, entries: dict[str, Any] | Callable[[], dict[str, Any]]) -> Prep:
    return lambda p: raw_h5(p / name, entries() if callable(entries) else entries)


def both(*preps: Prep) -> Prep:
    def prep(p: Path) -> None:
        for one in preps:
            one(p)
    return prep


def write_input(name: str, rows: int = ROWS) -> Prep:
    """A valid kmodel input file (no targets)."""
    def prep(p: Path) -> None:
        make_input(p / name, rows=rows)
    return prep


def truncated(name: str) -> Prep:
    def prep(p: Path) -> None:
        make_input(p / name, rows=2000)
        data = (p / name).read_bytes()
        (p / name).write_bytes(data[: len(data) // 2])
    return prep


def int_id_files(p: Path) -> None:
    """ai.h5/bi.h5/ti.h5: like a.h5/b.h5/t.h5 but with int64 ids, as Kipoi writes them."""
    rng = np.random.default_rng(1)
    ints = list(range(100, 100 + ROWS))
    preds_h5(p / "ai.h5", ints, rng.uniform(0.05, 0.95, ROWS), "m1")
    preds_h5(p / "bi.h5", ints[::-1], rng.uniform(0.05, 0.95, ROWS), "m2")
    targets_h5(p / "ti.h5", ints, labels())
    preds_h5(p / "short.h5", ints[1:], rng.uniform(0.05, 0.95, ROWS - 1), "m1")
    preds_h5(p / "dup.h5", [*ints[:-1], ints[0]], rng.uniform(0.05, 0.95, ROWS), "m1")
    preds_h5(p / "strids.h5", [str(i) for i in ints], rng.uniform(0.05, 0.95, ROWS), "m1")


#: write-only: even root cannot read it (root reads files of any mode)
SYS_UNREADABLE = Path("/sys/bus/pci/rescan")


def unreadable(name: str) -> Prep:
    """``name`` replaced by a file that cannot be read: mode 000 where the tests do not run
    as root; as root, a link to a write-only sysfs file."""
    def prep(p: Path) -> None:
        target = p / name
        if os.geteuid() != 0:
            target.write_bytes(b"secret")
            os.chmod(target, 0)
            return
        try:
            SYS_UNREADABLE.open("rb").close()
        except PermissionError:
            pass
        except OSError as e:
            pytest.skip(f"no file that root cannot read here ({e})")
        else:
            pytest.skip(f"{SYS_UNREADABLE} is readable here")
        target.unlink(missing_ok=True)
        target.symlink_to(SYS_UNREADABLE)
    return prep


def bad_targets(name: str, value: float) -> Prep:
    y = labels().astype(np.float64)
    y[3] = value
    return lambda p: targets_h5(p / name, IDS, y)


def weights_escaping(p: Path) -> None:
    """W2/hashes.json names a weight outside its folder (with the right sha256)."""
    stacker_weights(p / "W2", ["m1:proba", "m2:proba"])
    outside = p / "model_specs/toy/weights/scale-w-0.npy"
    hashes = json.loads((p / "W2/hashes.json").read_text())
    hashes["../model_specs/toy/weights/scale-w-0.npy"] = \
        hashlib.sha256(outside.read_bytes()).hexdigest()
    (p / "W2/hashes.json").write_text(json.dumps(hashes))


def forged_folder(p: Path) -> None:
    """A user's folder that happens to hold a checksum list of its own files."""
    (p / "forged").mkdir()
    (p / "forged" / "thesis.txt").write_text("precious")
    (p / "forged" / "hashes.json").write_text(json.dumps(
        {"thesis.txt": hashlib.sha256(b"precious").hexdigest()}))


def duplicated_ids(p: Path) -> None:
    """Predictions and targets that repeat the same id, in the same order."""
    ids = [*IDS[:-1], IDS[0]]
    preds_h5(p / "dupa.h5", ids, np.linspace(0.1, 0.9, ROWS), "m1")
    targets_h5(p / "dupt.h5", ids, labels())


def two_d_targets(p: Path) -> None:
    y = labels()
    targets_h5(p / "t2d.h5", IDS, np.stack([y, y], axis=1))


def breast_cancer_with_names(train: str, test: str) -> Prep:
    def prep(p: Path) -> None:
        from kmodel.datasets import breast_cancer

        breast_cancer(p / train, p / test)
    return prep


# --- spec texts ------------------------------------------------------------------------------


def spec(text: str | bytes) -> Prep:
    return write(TOY, text)


def toy_with(old: str, new: str) -> str:
    assert old in TOY_SPEC
    return TOY_SPEC.replace(old, new, 1)


ANCHORS = "".join(
    f"  l{i}: &l{i} [{', '.join(['lol'] * 10 if i == 0 else [f'*l{i - 1}'] * 10)}]\n"
    for i in range(10))
BOMB_ARGS = toy_with("  factor: 2.0\n", "  factor: 2.0\n" + ANCHORS)
BOMB_SHAPE = BOMB_ARGS.replace("shape: [3]", "shape: *l9")
DEEP = toy_with("  factor: 2.0\n", "  factor: 2.0\n  deep: " + "[" * 20000 + "]" * 20000 + "\n")
DUP_KEYS = toy_with("version: 0.1.0\n", "version: 0.1.0\nversion: 9.9.9\n")
DATE_ARGS = toy_with("  factor: 2.0\n", "  factor: 2.0\n  when: 2024-01-01\n")
STAMP_ARGS = toy_with("  factor: 2.0\n", "  factor: 2.0\n  when: 2024-01-01 10:00:00\n")
PY_TAG = toy_with("  factor: 2.0\n",
                  "  factor: !!python/object/apply:os.system ['touch pwned']\n")
BINARY = bytes(range(256)) * 8
BIG = TOY_SPEC + "# " + "x" * (50 << 20) + "\n"


def compose_cfg(results: str = "results", data: str = "{builtin: breast_cancer}") -> str:
    return (f"name: small\nresults: {json.dumps(results)}\ndata: {data}\n"
            "models: [mlp]\nensembler: stacker\nbatch_size: 64\n")


# --- success checks (cases that may also work) ----------------------------------------------


def is_predictions(name: str, rows: int = ROWS) -> Callable[[Path], None]:
    def check(p: Path) -> None:
        with h5py.File(p / name, "r") as f:
            assert "preds" in f and len(f["metadata/id"]) == rows
    return check


def is_weights(name: str) -> Callable[[Path], None]:
    return lambda p: json.loads((p / name / "hashes.json").read_text())


def anything(p: Path) -> None:
    """Success is fine; the contract still checks that nothing else changed."""


# --- the table ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    args: tuple[str, ...]
    codes: tuple[str, ...]
    names: tuple[str, ...]
    prep: Prep | None = None
    sub: bool = False  # run as a subprocess (may hang or eat memory, or: check real stderr)
    timeout: float = HANG
    memory: int | None = MEMORY
    exit_code: int = 1
    success: Callable[[Path], None] | None = None
    allowed: tuple[str, ...] = ()
    new_on_success: tuple[str, ...] = ()


def case(id_: str, args: str | Sequence[str], codes: str | tuple[str, ...],
         names: str | tuple[str, ...], *, slow: bool = False, **kw: Any) -> Any:
    argv = tuple(args.split()) if isinstance(args, str) else tuple(args)
    c = Case(argv, (codes,) if isinstance(codes, str) else codes,
             (names,) if isinstance(names, str) else names, **kw)
    return pytest.param(c, id=id_, marks=[pytest.mark.slow] if slow else [])


def long_name(n: int) -> str:
    """A file name exactly ``n`` bytes long."""
    return "n" * (n - 3) + ".h5"


L250, L252, L255, L256 = (long_name(n) for n in (250, 252, 255, 256))
LONG = "n" * 40  # what the message must show of a long name


PRED = "predict toy -i in.h5 -o"
SPEC_CODES = ("KM100", "KM101")
INPUT_CODES = ("KM400", "KM401")
PRED_OUT = ("out.h5", "out.h5.partial")

CASES = [
    # 1. the output resolves to one of the command's own inputs
    case("predict-out-is-input", f"{PRED} in.h5", "KM402", "in.h5", slow=True, sub=True),
    case("predict-out-dotdot-input", f"{PRED} sub/../in.h5", "KM402", "in.h5", slow=True,
         prep=mkdir("sub")),
    case("predict-out-abs-input", f"{PRED} {{p}}/in.h5", "KM402", "in.h5", slow=True),
    case("predict-out-symlink-to-input", f"{PRED} link.h5", "KM402", ("link.h5", "in.h5"),
         slow=True, prep=symlink("link.h5", "in.h5")),
    case("predict-out-hardlink-to-input", f"{PRED} hard.h5", "KM402", ("hard.h5", "in.h5"),
         slow=True, prep=hardlink("hard.h5", "in.h5")),
    case("predict-out-is-model-yaml", f"{PRED} {TOY}", "KM402", "model.yaml", slow=True),
    case("predict-out-is-model-code", f"{PRED} model_specs/toy/model.py", "KM402", "model.py",
         slow=True),
    case("predict-out-is-weight-file", f"{PRED} model_specs/toy/weights/scale-w-0.npy",
         "KM402", "scale-w-0.npy", slow=True),
    case("predict-out-is-lockfile", f"{PRED} envs/numpy2.lock", "KM402", "numpy2.lock",
         slow=True),
    case("compose-predict-out-is-pred", "compose predict stacker a.h5 b.h5 --weights W -o a.h5",
         "KM402", "a.h5", slow=True),
    case("compose-predict-out-symlink-to-pred",
         "compose predict stacker a.h5 b.h5 --weights W -o lb.h5", "KM402", ("lb.h5", "b.h5"),
         slow=True, prep=symlink("lb.h5", "b.h5")),
    case("compose-predict-out-in-weights",
         "compose predict stacker a.h5 b.h5 --weights W -o W/hashes.json", "KM402",
         "hashes.json", slow=True),
    case("compose-train-out-holds-targets",
         "compose train stacker a.h5 b.h5 --targets data/t.h5 -o data", "KM402", "data",
         slow=True, prep=move("t.h5", "data/t.h5")),
    case("compose-train-out-holds-pred",
         "compose train stacker preds/a.h5 b.h5 --targets t.h5 -o preds", "KM402", "preds",
         slow=True, prep=move("a.h5", "preds/a.h5")),
    case("compose-train-out-dot", "compose train stacker a.h5 b.h5 --targets t.h5 -o .",
         "KM402", ".", slow=True),
    case("compose-train-out-is-ensembler-folder",
         "compose train stacker a.h5 b.h5 --targets t.h5 -o model_specs/stacker", "KM402",
         "stacker", slow=True),
    case("score-out-is-targets", "score a=a.h5 --targets t.h5 -o t.h5", "KM402", "t.h5",
         sub=True),
    case("score-out-is-pred", "score a=a.h5 --targets t.h5 -o a.h5", "KM402", "a.h5"),
    case("score-out-dotdot-targets", "score a=a.h5 --targets t.h5 -o sub/./../t.h5", "KM402",
         "t.h5", prep=mkdir("sub")),
    case("score-out-symlink-to-targets", "score a=a.h5 --targets t.h5 -o lt.json", "KM402",
         ("lt.json", "t.h5"), prep=symlink("lt.json", "t.h5")),
    case("train-out-dot", "train toy -i in.h5 -o .", "KM402", ".", slow=True),
    case("train-out-holds-input", "train toy -i data/in.h5 -o data", "KM402", "data",
         slow=True, prep=move("in.h5", "data/in.h5")),
    case("train-out-user-folder", "train toy -i in.h5 -o userdir", "KM402", "userdir",
         slow=True, prep=mkdir("userdir", 0o750, ["thesis.txt"])),
    case("train-out-own-model-folder", "train toy -i in.h5 -o model_specs/toy", "KM402",
         "model_specs/toy", slow=True),
    case("train-out-env-folder", "train toy -i in.h5 -o envs", "KM402", "envs", slow=True),

    # 1b. an existing file of the user's is never replaced (only kmodel's own outputs are)
    case("score-out-user-file", "score a=a.h5 --targets t.h5 -o notes.txt", "KM402",
         "notes.txt", prep=write("notes.txt", "precious")),
    case("data-out-user-dataset", "data breast_cancer --train a.h5 --test x.h5", "KM402",
         "a.h5"),
    case("compose-predict-out-user-dataset",
         "compose predict stacker a.h5 b.h5 --weights W -o t.h5", "KM402", "t.h5", slow=True),
    case("train-out-forged-checksums", "train toy -i in.h5 -o forged", "KM402", "forged",
         slow=True, prep=forged_folder),
    # 1c. labels, ids and targets that cannot be scored or trained on as given
    case("score-duplicate-label", "score a=a.h5 a=b.h5 --targets t.h5", "KM002", "'a'",
         exit_code=2),
    case("score-empty-label", "score =a.h5 --targets t.h5", "KM002", "empty label",
         exit_code=2),
    case("score-targets-duplicate-ids", "score a=dupa.h5 --targets dupt.h5", "KM600",
         "dupt.h5", prep=duplicated_ids),
    case("score-targets-2d", "score a=a.h5 --targets t2d.h5", "KM601", ("t2d.h5", "shape"),
         prep=two_d_targets),
    case("data-negative-seed", "data breast_cancer --train x.h5 --test y.h5 --seed -1",
         "KM002", "--seed", exit_code=2),
    case("compose-train-ensembler-of-another-width",
         "compose train toy a.h5 b.h5 --targets t.h5 -o W3", "KM401", ("toy", "2 column"),
         slow=True),

    # 2. a booby-trapped OUT.h5.partial: never written through, never a crash
    case("partial-symlink-to-precious", f"{PRED} out.h5", ("KM402", "KM403"), "out.h5",
         slow=True, prep=both(write("precious.txt", "precious\n"),
                              symlink("out.h5.partial", "precious.txt")),
         success=is_predictions("out.h5"), new_on_success=("out.h5",),
         allowed=("out.h5.partial",)),
    case("partial-symlink-to-precious-resume", f"{PRED} out.h5 --resume", ("KM402", "KM403"),
         "out.h5", slow=True, prep=both(write_input("precious.h5", rows=5),
                                        symlink("out.h5.partial", "precious.h5")),
         success=is_predictions("out.h5"), new_on_success=("out.h5",),
         allowed=("out.h5.partial",)),
    case("partial-dangling-symlink", f"{PRED} out.h5", ("KM402", "KM403"), "out.h5",
         slow=True, prep=symlink("out.h5.partial", "stolen.h5"),
         success=is_predictions("out.h5"), new_on_success=("out.h5",),
         allowed=("out.h5.partial",)),
    case("partial-is-folder", f"{PRED} out.h5", ("KM402", "KM403"), "out.h5", slow=True,
         prep=mkdir("out.h5.partial", files=["keep.txt"]),
         success=is_predictions("out.h5"), new_on_success=("out.h5",)),

    # 3. inputs that are not kmodel input files
    case("input-is-folder", "predict toy -i indir -o out.h5", "KM400", "indir",
         prep=mkdir("indir")),
    case("input-is-fifo", "predict toy -i in.fifo -o out.h5", "KM400", "in.fifo",
         prep=fifo("in.fifo"), sub=True, timeout=HANG),
    case("input-is-dev-null", "predict toy -i /dev/null -o out.h5", INPUT_CODES, "/dev/null"),
    case("input-dangling-symlink", "predict toy -i gone.h5 -o out.h5", "KM400", "gone.h5",
         prep=symlink("gone.h5", "nowhere.h5")),
    case("input-inputs-is-dataset", "predict toy -i bad.h5 -o out.h5", "KM401", "bad.h5",
         prep=h5("bad.h5", {"inputs": np.zeros((ROWS, 3), np.float32),
                            "metadata/id": ids_array(IDS)})),
    case("input-metadata-is-dataset", "predict toy -i bad.h5 -o out.h5", "KM401", "bad.h5",
         prep=h5("bad.h5", {"inputs/x": np.zeros((ROWS, 3), np.float32),
                            "metadata": ids_array(IDS)})),
    case("input-scalar-ids", "predict toy -i bad.h5 -o out.h5", "KM401", "bad.h5",
         prep=h5("bad.h5", {"inputs/x": np.zeros((ROWS, 3), np.float32),
                            "metadata/id": np.bytes_(b"only")})),
    case("input-2d-ids", "predict toy -i bad.h5 -o out.h5", "KM401", "bad.h5", slow=True,
         prep=h5("bad.h5", {"inputs/x": np.zeros((ROWS, 3), np.float32),
                            "metadata/id": np.stack([ids_array(IDS)] * 2, axis=1)})),
    case("input-scalar-x", "predict toy -i bad.h5 -o out.h5", "KM401", "bad.h5",
         prep=h5("bad.h5", {"inputs/x": np.float32(1.0), "metadata/id": ids_array(IDS)})),
    case("input-compound-x", "predict toy -i bad.h5 -o out.h5", "KM401", "bad.h5",
         prep=h5("bad.h5", {"inputs/x": np.zeros(ROWS, [("a", "f4"), ("b", "f4"), ("c", "f4")]),
                            "metadata/id": ids_array(IDS)})),
    case("input-bytes-x", "predict toy -i bad.h5 -o out.h5", "KM401", "bad.h5",
         prep=h5("bad.h5", {"inputs/x": np.full((ROWS, 3), b"1.5"),
                            "metadata/id": ids_array(IDS)})),
    case("input-vlen-string-x", "predict toy -i bad.h5 -o out.h5", "KM401", "bad.h5",
         prep=h5("bad.h5", lambda: {"inputs/x": np.array([["1", "2", "3"]] * ROWS,
                                                         dtype=h5py.string_dtype()),
                                    "metadata/id": ids_array(IDS)})),
    case("input-length-mismatch", "predict toy -i bad.h5 -o out.h5", "KM401", "bad.h5",
         prep=h5("bad.h5", {"inputs/x": np.zeros((ROWS, 3), np.float32),
                            "metadata/id": ids_array(IDS[:-3])})),
    case("input-dangling-soft-link", "predict toy -i bad.h5 -o out.h5", "KM401", "bad.h5",
         prep=h5("bad.h5", lambda: {"inputs/x": h5py.SoftLink("/nowhere"),
                                    "metadata/id": ids_array(IDS)})),
    case("input-external-link-missing", "predict toy -i bad.h5 -o out.h5", "KM401", "bad.h5",
         prep=h5("bad.h5", lambda: {"inputs/x": h5py.ExternalLink("missing.h5", "/x"),
                                    "metadata/id": ids_array(IDS)})),
    case("input-empty-file", "predict toy -i bad.h5 -o out.h5", "KM401", "bad.h5",
         prep=write("bad.h5", b"")),
    case("input-text-file", "predict toy -i bad.h5 -o out.h5", "KM401", "bad.h5",
         prep=write("bad.h5", "id,x\nr0,1\n")),
    case("input-truncated-hdf5", "predict toy -i bad.h5 -o out.h5", "KM401", "bad.h5",
         prep=truncated("bad.h5"), slow=True),
    # (an empty region or shard is normal: no rows in, no rows out)
    case("input-zero-rows", "predict toy -i bad.h5 -o out.h5", "KM401", "bad.h5", slow=True,
         prep=h5("bad.h5", {"inputs/x": np.zeros((0, 3), np.float32),
                            "metadata/id": np.zeros(0, "S4")}),
         success=is_predictions("out.h5", rows=0), new_on_success=["out.h5"]),
    case("train-input-no-targets", "train toy -i bad.h5 -o w", ("KM401", "KM601"),
         ("bad.h5", "targets"), slow=True, prep=write_input("bad.h5")),
    case("train-targets-length-mismatch", "train toy -i bad.h5 -o w", ("KM401", "KM601"),
         ("bad.h5", "targets"), slow=True,
         prep=h5("bad.h5", {"inputs/x": np.zeros((ROWS, 3), np.float32),
                            "targets/y": np.zeros(ROWS - 2), "metadata/id": ids_array(IDS)})),
    case("score-pred-is-folder", "score a=pdir --targets t.h5", INPUT_CODES, "pdir",
         prep=mkdir("pdir")),
    case("score-string-preds", "score a=bad.h5 --targets t.h5", ("KM401", "KM600"), "bad.h5",
         prep=h5("bad.h5", {"preds/proba": np.full(ROWS, b"high"),
                            "metadata/id": ids_array(IDS)})),
    case("score-targets-text-file", "score a=a.h5 --targets bad.h5", INPUT_CODES, "bad.h5",
         prep=write("bad.h5", "y\n1\n0\n")),
    case("score-scalar-ids", "score a=bad.h5 --targets t.h5", ("KM401", "KM600"), "bad.h5",
         prep=h5("bad.h5", {"preds/proba": np.zeros(ROWS, np.float32),
                            "metadata/id": np.bytes_(b"r0")})),

    # 4. broken spec files: a quick KM100/KM101, never a hang, a traceback or a blow-up
    case("spec-duplicate-keys-validate", f"validate {TOY}", SPEC_CODES, ("model.yaml",),
         prep=spec(DUP_KEYS), sub=True),
    case("spec-duplicate-keys-info", "info toy", SPEC_CODES, "model.yaml", prep=spec(DUP_KEYS)),
    case("spec-negative-shape", f"validate {TOY}", "KM101", ("inputs.0.shape",),
         prep=spec(toy_with("shape: [3]", "shape: [-3]"))),
    case("spec-zero-shape", f"validate {TOY}", "KM101", ("inputs.0.shape",),
         prep=spec(toy_with("shape: [3]", "shape: [0]"))),
    case("spec-negative-output-shape", f"validate {TOY}", "KM101", ("outputs.0.shape",),
         prep=spec(toy_with("    shape: []\n", "    shape: [-1]\n"))),
    case("spec-negative-shape-predict", f"{PRED} out.h5", "KM101", ("inputs.0.shape",),
         prep=spec(toy_with("shape: [3]", "shape: [-3]"))),
    case("spec-date-in-args-validate", f"validate {TOY}", "KM101", ("args.when", "when"),
         prep=spec(DATE_ARGS)),
    case("spec-timestamp-in-args-validate", f"validate {TOY}", "KM101", ("args.when", "when"),
         prep=spec(STAMP_ARGS)),
    case("spec-date-in-args-info-json", "info toy --json", "KM101", ("args.when", "when"),
         prep=spec(DATE_ARGS)),
    case("spec-date-in-args-predict", f"{PRED} out.h5", "KM101", ("args.when", "when"),
         prep=spec(DATE_ARGS), slow=True),
    case("spec-python-tag", f"validate {TOY}", SPEC_CODES, "model.yaml", prep=spec(PY_TAG)),
    case("spec-alias-bomb-args-validate", f"validate {TOY}", SPEC_CODES, "model.yaml",
         prep=spec(BOMB_ARGS), sub=True, timeout=HANG),
    case("spec-alias-bomb-args-info", "info toy --json", SPEC_CODES, "model.yaml",
         prep=spec(BOMB_ARGS), sub=True, timeout=HANG),
    case("spec-alias-bomb-shape-validate", f"validate {TOY}", SPEC_CODES, "model.yaml",
         prep=spec(BOMB_SHAPE), sub=True, timeout=HANG),
    case("spec-deep-nesting-validate", f"validate {TOY}", SPEC_CODES, "model.yaml",
         prep=spec(DEEP), sub=True, timeout=HANG),
    case("spec-deep-nesting-ls", "ls", SPEC_CODES, "model.yaml", prep=spec(DEEP), sub=True,
         timeout=HANG),
    case("spec-is-fifo-validate", "validate fifo.yaml", "KM101", "fifo.yaml",
         prep=fifo("fifo.yaml"), sub=True, timeout=HANG),
    case("spec-model-yaml-is-fifo-info", "info toy", "KM101", "model.yaml", prep=fifo(TOY),
         sub=True, timeout=HANG),
    case("spec-model-yaml-is-fifo-ls", "ls", "KM101", "model.yaml", prep=fifo(TOY), sub=True,
         timeout=HANG),
    case("spec-dev-zero", "validate /dev/zero", "KM101", "/dev/zero", sub=True, timeout=HANG),
    case("spec-dev-urandom", "validate /dev/urandom", "KM101", "/dev/urandom", sub=True,
         timeout=HANG),
    case("spec-binary", f"validate {TOY}", SPEC_CODES, "model.yaml", prep=spec(BINARY)),
    case("spec-binary-info", "info toy", SPEC_CODES, "model.yaml", prep=spec(BINARY)),
    case("spec-empty", f"validate {TOY}", SPEC_CODES, "model.yaml", prep=spec("")),
    case("spec-empty-info", "info toy", SPEC_CODES, "model.yaml", prep=spec("")),
    case("spec-50mb", f"validate {TOY}", SPEC_CODES, "model.yaml", prep=spec(BIG), sub=True,
         timeout=HANG),

    # 5. integer ids (Kipoi's files), NaN/inf targets, one-class targets
    case("score-int-ids", "score a=ai.h5 b=bi.h5 --targets ti.h5", "KM6", "ai.h5",
         prep=int_id_files, success=anything),
    case("score-int-ids-one-missing", "score a=short.h5 --targets ti.h5", "KM600", "short.h5",
         prep=int_id_files),
    case("score-int-ids-duplicated", "score a=dup.h5 --targets ti.h5", "KM600", "dup.h5",
         prep=int_id_files),
    case("score-str-ids-vs-int-targets", "score a=strids.h5 --targets ti.h5", "KM600",
         ("strids.h5", "ti.h5"), prep=int_id_files, success=anything),
    case("score-nan-targets", "score a=a.h5 --targets tn.h5", "KM6", ("tn.h5", "targets/y"),
         prep=bad_targets("tn.h5", np.nan)),
    case("score-one-class-targets", "score a=a.h5 --targets t1.h5", ("KM6", "KM401"),
         ("t1.h5", "targets/y"), prep=lambda p: targets_h5(p / "t1.h5", IDS, np.ones(ROWS)),
         success=anything),
    case("compose-train-int-ids", "compose train stacker ai.h5 bi.h5 --targets ti.h5 -o Wi",
         "KM6", ("ai.h5", "bi.h5", "ti.h5"), slow=True, prep=int_id_files,
         success=is_weights("Wi"), new_on_success=("Wi", "Wi/*")),
    case("compose-train-int-ids-one-missing",
         "compose train stacker ai.h5 short.h5 --targets ti.h5 -o Wi", "KM600", "short.h5",
         prep=int_id_files),
    case("compose-predict-int-ids", "compose predict stacker ai.h5 bi.h5 --weights W -o ei.h5",
         "KM6", ("ai.h5", "bi.h5"), slow=True, prep=int_id_files,
         success=is_predictions("ei.h5"), new_on_success=("ei.h5",)),
    *(case(f"compose-train-{label}-targets",
           "compose train stacker a.h5 b.h5 --targets tn.h5 -o W2", "KM6",
           ("tn.h5", "targets/y"), slow=True, prep=bad_targets("tn.h5", value))
      for label, value in (("nan", np.nan), ("inf", np.inf), ("neg-inf", -np.inf))),
    case("compose-predict-weights-escape-folder",
         "compose predict stacker a.h5 b.h5 --weights W2 -o e.h5",
         ("KM120", "KM300", "KM301", "KM101"), ("hashes.json", "W2"), slow=True,
         prep=weights_escaping),

    # 6. names too long: refused (or, where the name itself is legal, done right)
    case("predict-out-256-bytes", f"{PRED} {L256}", "KM402", LONG, slow=True),
    case("predict-out-255-bytes", f"{PRED} {L255}", "KM402", LONG, slow=True,
         success=is_predictions(L255), new_on_success=(L255,)),
    case("predict-out-250-bytes", f"{PRED} {L250}", "KM402", LONG, slow=True,
         success=is_predictions(L250), new_on_success=(L250,)),
    case("score-out-256-bytes", f"score a=a.h5 --targets t.h5 -o {L256}", "KM402", LONG),
    case("score-out-252-bytes", f"score a=a.h5 --targets t.h5 -o {L252}", "KM402", LONG,
         success=lambda p: json.loads((p / L252).read_text()), new_on_success=(L252,)),
    case("train-out-252-bytes", f"train toy -i in.h5 -o {L252}", "KM402", LONG, slow=True,
         success=is_weights(L252), new_on_success=(L252, L252 + "/*")),
    case("compose-train-out-250-bytes",
         f"compose train stacker a.h5 b.h5 --targets t.h5 -o {L250}", "KM402", LONG,
         slow=True, success=is_weights(L250), new_on_success=(L250, L250 + "/*")),

    # 7. shell metacharacters in a composition: an error, or harmless (no `pwned` anywhere)
    *(case(f"config-results-{i}", "validate cfg.yaml", "KM101", ("results", "cfg.yaml"),
           prep=write("cfg.yaml", compose_cfg(results)), success=anything)
      for i, results in enumerate(["r;touch pwned;r", "x||touch pwned||", "$(touch pwned)",
                                   "`touch pwned`", "x' ; touch pwned ; '", "x\ntouch pwned",
                                   "-rf", "x > pwned"])),
    case("config-data-path-metachar", "validate cfg.yaml", ("KM101", "KM400"),
         ("data", "cfg.yaml", "touch pwned"),
         prep=write("cfg.yaml", compose_cfg(data='{train: "t||touch pwned||.h5", test: t.h5}')),
         success=anything),
    # (Snakemake runs `set -euo pipefail; ...`: `;` injects after a command that succeeds,
    # `||` after one that fails)
    case("run-results-metachar", "run cfg.yaml --cores 1", ("KM101", "KM700"),
         ("results", "cfg.yaml"), slow=True, sub=True, timeout=300, memory=None,
         prep=write("cfg.yaml", compose_cfg("r;touch pwned;r")), success=anything,
         new_on_success=("r;touch pwned;r*",), allowed=(".snakemake*", "r;touch pwned;r*")),
    case("run-data-path-metachar", "run cfg.yaml --cores 1", ("KM101", "KM700"),
         ("data", "cfg.yaml"), slow=True, sub=True, timeout=300, memory=None,
         prep=both(breast_cancer_with_names("tr||touch pwned||.h5", "te.h5"),
                   write("cfg.yaml", compose_cfg(
                       data='{train: "tr||touch pwned||.h5", test: te.h5}'))),
         success=anything, new_on_success=("results*",), allowed=(".snakemake*", "results*")),

    # 8. found by a second, adversarial review
    case("record-over-model-spec", f"env create toy --record {TOY}", "KM402", "model.yaml"),
    case("record-over-env-lock", "env create numpy2 --record envs/numpy2.lock", "KM402",
         "numpy2.lock"),
    case("score-out-over-other-models-spec", f"score a=a.h5 --targets t.h5 -o {TOY}",
         "KM402", "model.yaml"),
    case("score-out-is-fifo", "score a=a.h5 --targets t.h5 -o out.json", "KM402", "out.json",
         sub=True, timeout=HANG, prep=fifo("out.json")),
    case("merge-out-is-fifo", "merge a.h5 -o out.h5", "KM402", "out.h5", sub=True,
         timeout=HANG, prep=fifo("out.h5")),
    case("data-out-is-fifo", "data breast_cancer --train tr.h5 --test te.h5", "KM402",
         "tr.h5", sub=True, timeout=HANG, prep=fifo("tr.h5")),
    case("compose-predict-pred-is-fifo", "compose predict stacker a.h5 f.h5 --weights W -o o.h5",
         INPUT_CODES, "f.h5", sub=True, timeout=HANG, prep=fifo("f.h5")),
    case("score-pred-is-fifo", "score a=f.h5 --targets t.h5", INPUT_CODES, "f.h5", sub=True,
         timeout=HANG, prep=fifo("f.h5")),
    case("hash-weight-is-fifo", "hash toy", "KM300", "scale-w-0.npy", sub=True, timeout=HANG,
         prep=fifo("model_specs/toy/weights/scale-w-0.npy")),
    case("score-zero-row-preds", "score a=e.h5 --targets t.h5", ("KM600", "KM401"), "e.h5",
         prep=h5("e.h5", {"preds/proba": np.zeros(0, np.float32),
                          "metadata/id": np.zeros(0, "S4")})),
    case("score-zero-row-targets", "score a=a.h5 --targets e.h5", ("KM601", "KM401"), "e.h5",
         prep=h5("e.h5", {"targets/y": np.zeros(0), "metadata/id": np.zeros(0, "S4")}),
         success=anything),  # nothing to score, said
    case("score-array-attributes", "score a=x.h5 --targets t.h5", ("KM4", "KM6"), "x.h5",
         success=anything, prep=lambda p: (preds_h5(p / "x.h5", IDS, labels(), "m1"),
                                           _set_attr(p / "x.h5", "model", np.arange(3)))),
    case("compose-train-float64-overflow",
         "compose train stacker a.h5 big.h5 --targets t.h5 -o Wn", ("KM401", "KM604"), "big.h5",
         prep=h5("big.h5", {"preds/proba": np.full(ROWS, 1e300),  # float64, beyond float32
                            "metadata/id": ids_array(IDS)}),
         sub=True),
    case("lock-lease-not-a-number", f"{PRED} out.h5", "KM002", "KMODEL_LOCK_LEASE", slow=True,
         exit_code=2, sub=True, prep=lambda p: os.environ.__setitem__("KMODEL_LOCK_LEASE", "abc")),
    case("user-file-named-like-the-lock", f"{PRED} out.h5", "KM402", "out.h5.lock", slow=True,
         prep=both(write("out.h5.lock", "my notes\n"), lambda p: os.utime(
             p / "out.h5.lock", (0, 0)))),
    case("spec-integer-of-5000-digits", f"validate {TOY}", SPEC_CODES, "model.yaml", sub=True,
         prep=spec(toy_with("  factor: 2.0\n", "  factor: 2.0\n  n: " + "9" * 5000 + "\n"))),
    case("spec-nul-in-version", f"validate {TOY}", SPEC_CODES, "model.yaml",
         prep=spec(toy_with("version: 0.1.0", 'version: "0.1\\0"'))),
    case("spec-output-of-free-shape", f"validate {TOY}", SPEC_CODES, "model.yaml",
         prep=spec(toy_with("    shape: []\n  - name: norm", "    shape: [null]\n  - name: norm"))),
    case("train-nan-targets", "train toy -i nt.h5 -o w", "KM604", ("nt.h5", "targets"),
         slow=True, prep=lambda p: make_input(p / "nt.h5", rows=ROWS, targets=np.where(
             labels() > 0, np.nan, 0.0))),
    case("train-string-targets", "train toy -i st.h5 -o w", "KM401", ("st.h5", "targets"),
         slow=True, prep=h5("st.h5", {"inputs/x": np.zeros((ROWS, 3), np.float32),
                                      "targets/y": np.full(ROWS, b"yes"),
                                      "metadata/id": ids_array(IDS)})),
    case("run-data-file-missing", "run cfg.yaml --cores 1", "KM400", "nope.h5", sub=True,
         timeout=HANG, memory=None, prep=write("cfg.yaml", compose_cfg(
             data="{train: nope.h5, test: in.h5}"))),

    # unreadable inputs: KM405 naming the file, whichever command reads it
    case("unreadable-input-predict", f"{PRED} out.h5", "KM405", "in.h5",
         prep=unreadable("in.h5")),
    case("unreadable-preds-compose", "compose train --targets t.h5 -o Wx -- stacker a.h5 b.h5",
         "KM405", "b.h5", prep=unreadable("b.h5")),
    case("unreadable-targets-score", "score --targets t.h5 a.h5", "KM405", "t.h5",
         prep=unreadable("t.h5")),
    case("unreadable-shard-merge", "merge -o m.h5 a.h5 b.h5", "KM405", "a.h5",
         prep=unreadable("a.h5")),
    case("unreadable-prediction-verify", "verify a.h5", "KM405", "a.h5",
         prep=unreadable("a.h5")),
    case("unreadable-config-status", "status cfg.yaml", "KM405", "cfg.yaml",
         prep=unreadable("cfg.yaml")),
    case("unreadable-table-import", "data import t.csv -o t2.h5", "KM405", "t.csv",
         prep=unreadable("t.csv")),
    case("unreadable-spec-validate", f"validate {TOY}", "KM405", "model.yaml",
         prep=unreadable(TOY)),
    # a composition that names its ensembler among the base models: refused before Snakemake
    case("run-ensembler-as-base-model", "run cfg.yaml --cores 1", "KM101", "stacker",
         prep=write("cfg.yaml", compose_cfg().replace("models: [mlp]",
                                                      "models: [mlp, stacker]"))),

    # usage errors: exit 2, still one KM line (KM002)
    case("usage-missing-output", "predict toy -i in.h5", "KM002", ("-o", "--output"),
         exit_code=2),
    case("usage-zero-batch-size", f"{PRED} out.h5 --batch-size 0", "KM002", "--batch-size",
         exit_code=2),
    case("usage-missing-targets", "compose train stacker a.h5 -o Wx", "KM002", "--targets",
         exit_code=2),
]


@pytest.mark.parametrize("c", CASES)
def test_hostile(project: Path, c: Case, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KMODEL_LOCK_LEASE", "120")  # restored afterwards, whatever prep sets
    base_files(project)
    if c.prep:
        c.prep(project)
    before = snapshot(project)
    args = [a.replace("{p}", str(project)) for a in c.args]  # {p}: the project folder
    out = spawn(*args, timeout=c.timeout, memory=c.memory) if c.sub else invoke(*args)
    assert_contract(out, before, project, codes=c.codes, names=c.names,
                    exit_code=c.exit_code, success=c.success, allowed=c.allowed,
                    new_on_success=c.new_on_success)


@pytest.mark.slow
def test_baseline_commands_work(project: Path) -> None:
    """The files the cases start from are valid: without the hostile twist, all works."""
    base_files(project)
    for args in ("predict toy -i in.h5 -o out.h5", "train toy -i in.h5 -o w",
                 "compose train stacker a.h5 b.h5 --targets t.h5 -o W2",
                 "compose predict stacker a.h5 b.h5 --weights W -o e.h5",
                 "score a=a.h5 b=b.h5 --targets t.h5 -o s.json", "validate"):
        out = invoke(*args.split())
        assert (out.code, out.exception) == (0, None), f"{args}: {out.stderr}"
    is_predictions("out.h5")(project)
    is_predictions("e.h5")(project)


# --- properties ----------------------------------------------------------------------------

PROPS = settings(max_examples=30, deadline=None, database=None,
                 suppress_health_check=[HealthCheck.function_scoped_fixture])


@PROPS
@given(data=st.one_of(st.binary(max_size=400),
                      st.tuples(st.integers(0, len(TOY_SPEC)), st.binary(max_size=60))
                      .map(lambda t: TOY_SPEC.encode()[: t[0]] + t[1])))
def test_any_bytes_as_spec(project: Path, data: bytes) -> None:
    """Whatever model.yaml holds, validate says ok or gives one clean error."""
    (project / TOY).write_bytes(data)
    before = snapshot(project)
    assert_contract(invoke("validate", TOY), before, project,
                    codes=("KM100", "KM101", "KM111", "KM120"), names=("model.yaml",),
                    success=anything)


yaml_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8)
    | st.dates() | st.datetimes(),
    lambda inner: st.lists(inner, max_size=3)
    | st.dictionaries(st.from_regex(r"[a-z]{1,5}", fullmatch=True), inner, max_size=3),
    max_leaves=8)
SPEC_FIELDS = [("args", "extra"), ("args", "factor"), ("train", "args"), ("inputs", "shape"),
               ("outputs", "shape"), ("version",), ("description",), ("inputs", "doc")]


@PROPS
@given(where=st.sampled_from(SPEC_FIELDS), value=yaml_values)
def test_any_value_in_a_spec_field(project: Path, where: tuple[str, ...], value: Any) -> None:
    """A spec validate accepts can be shown by `info --json`; otherwise one clean error."""
    import yaml

    doc = yaml.safe_load(TOY_SPEC)
    node = doc[where[0]]
    node = node[0] if isinstance(node, list) else node
    if len(where) == 1:
        doc[where[0]] = value
    else:
        node[where[1]] = value
    (project / TOY).write_text(yaml.safe_dump(doc))
    before = snapshot(project)

    def info_works(p: Path) -> None:
        info = invoke("info", "toy", "--json")
        assert (info.code, info.exception) == (0, None), \
            f"validate accepted {value!r} at {where}, info --json then failed: {info!r}"
        json.loads(info.stdout)

    assert_contract(invoke("validate", TOY), before, project, codes=("KM100", "KM101"),
                    names=(".".join(where[:1]), "model.yaml"), success=info_works)


@PROPS
@given(hops=st.lists(st.sampled_from([".", "sub/..", "sub/./..", "lnk", "sub/../lnk"]),
                     max_size=4),
       absolute=st.booleans())
def test_output_aliasing_the_targets_is_refused(project: Path, hops: list[str],
                                                absolute: bool) -> None:
    """However the path is spelt, score -o never overwrites its own targets file."""
    if not (project / "W").exists():  # once per test, not per example
        base_files(project)
    targets_h5(project / "t.h5", IDS, labels())  # afresh, whatever the last example did
    (project / "sub").mkdir(exist_ok=True)
    if not (project / "lnk").is_symlink():
        (project / "lnk").symlink_to(".")
    path = "/".join([*hops, "t.h5"])
    if absolute:
        path = str(project / path)
    before = snapshot(project)
    assert_contract(invoke("score", "a=a.h5", "--targets", "t.h5", "-o", path), before,
                    project, codes=("KM402",), names=("t.h5",))


@PROPS
@given(dtype=st.sampled_from(["float32", "float64", "int64", "bool", "complex64", "S4",
                              "U4"]),
       row_shape=st.sampled_from([(), (3,), (4,), (3, 1), (1, 3), (0,)]),
       rows=st.integers(1, 6), id_delta=st.sampled_from([0, 0, -1, 1]),
       int_ids=st.booleans())
def test_malformed_input_layouts(project: Path, dtype: str, row_shape: tuple[int, ...],
                                 rows: int, id_delta: int, int_ids: bool) -> None:
    """Any input that does not fit toy's spec ((3,) float32 rows, one id per row): KM401."""
    castable = dtype in ("float32", "float64", "int64", "bool")
    assume(not (castable and row_shape == (3,) and id_delta == 0))
    x = np.zeros((rows, *row_shape), dtype=np.dtype(dtype).str.replace("<U", "|S"))
    ids = np.arange(rows + id_delta) if int_ids else ids_array([f"r{i}" for i in
                                                                range(rows + id_delta)])
    raw_h5(project / "lay.h5", {"inputs/x": x, "metadata/id": ids})
    before = snapshot(project)
    assert_contract(invoke("predict", "toy", "-i", "lay.h5", "-o", "out.h5"), before, project,
                    codes=("KM401",), names=("lay.h5",))


@PROPS
@given(target_ids=st.lists(st.integers(0, 12), min_size=2, max_size=10, unique=True),
       pred_ids=st.lists(st.integers(0, 12), min_size=1, max_size=12),
       int_targets=st.booleans(), int_preds=st.booleans())
def test_any_ids_score_or_fail_cleanly(project: Path, target_ids: list[int],
                                       pred_ids: list[int], int_targets: bool,
                                       int_preds: bool) -> None:
    """score aligns by id: a permutation of the targets' ids works, anything else is KM600."""
    def as_ids(ids: list[int], ints: bool) -> list[Any]:
        return ids if ints else [str(i) for i in ids]

    y = np.arange(len(target_ids)) % 2
    targets_h5(project / "tt.h5", as_ids(target_ids, int_targets), y)
    preds_h5(project / "pp.h5", as_ids(pred_ids, int_preds), np.linspace(0, 1, len(pred_ids)),
             "m")
    before = snapshot(project)
    out = invoke("score", "a=pp.h5", "--targets", "tt.h5", "--json")
    matches = sorted(pred_ids) == sorted(target_ids)  # the same ids, as text

    def rows_match(p: Path) -> None:
        assert json.loads(out.stdout)["a"]["rows"] == len(target_ids)

    assert_contract(out, before, project, codes=("KM600",), names=("pp.h5",),
                    success=rows_match if matches else None)



def test_validate_checks_what_the_data_of_a_composition_needs(project: Path) -> None:
    """`kmodel validate` (and `kmodel run`, before Snakemake) checks what `data:` needs:
    scikit-learn where kmodel runs for builtin data, and given files that hold inputs and
    the targets, each problem named with its field."""
    base_files(project)
    (project / "cfg.yaml").write_text(compose_cfg())
    no_sklearn = ("import sys; sys.modules['sklearn'] = None; sys.argv = ['kmodel', 'validate',"
                  " 'cfg.yaml']; from kmodel.__main__ import main; main()")
    res = subprocess.run([sys.executable, "-c", no_sklearn], cwd=project, capture_output=True,
                         text=True, timeout=HANG)
    assert res.returncode == 1 and "Traceback" not in res.stderr, res.stderr
    assert "data: builtin: breast_cancer needs scikit-learn" in res.stdout + res.stderr
    assert invoke("validate", "cfg.yaml").code == 0  # here it is installed
    for data, field, says in [
            ("{train: a.h5, test: in.h5}", "data.train", "a.h5 has no /inputs datasets"),
            ("{train: in.h5, test: nope.h5}", "", "nope.h5"),
            ("{train: in.h5, test: a.h5}", "data.test", "a.h5 has no /inputs datasets")]:
        (project / "cfg.yaml").write_text(compose_cfg(data=data))
        out = invoke("validate", "cfg.yaml")
        said = out.stdout + out.stderr
        assert out.code == 1 and field in said and says in said, said
    make_input(project / "nt.h5", rows=ROWS)  # features, no targets
    (project / "cfg.yaml").write_text(compose_cfg(data="{train: nt.h5, test: in.h5}"))
    out = invoke("run", "cfg.yaml", "--cores", "1")
    assert out.code == 1 and "data.train: nt.h5 has no /targets/y" in out.stderr, out.stderr
