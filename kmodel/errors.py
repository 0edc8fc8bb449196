"""The error catalogue: every user-facing failure is a KmodelError with a stable code.

Each error builds a one-line message naming the file, field or value involved and how
to fix it. The CLI prints ``Error [CODE]: message`` and exits with ``exit_code``;
tracebacks are shown only with ``-v``.
"""

from __future__ import annotations

import errno
from pathlib import Path


class KmodelError(Exception):
    """Root of every error kmodel reports to a user."""

    code = "KM000"
    exit_code = 1

    def __init__(self, message: str, *, detail: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        #: extra text (e.g. a model's own traceback) shown only with -v
        self.detail = detail

    def __str__(self) -> str:
        return self.message


def _where(path: str | Path, line: int | None = None) -> str:
    return f"{path}:{line}" if line else str(path)


# --- specs and configuration -------------------------------------------------------


class SpecError(KmodelError):
    """A spec or config file is malformed or has an invalid field."""

    code = "KM101"

    def __init__(self, path: str | Path, problem: str, *, field: str | None = None,
                 line: int | None = None, fix: str | None = None) -> None:
        self.path, self.field, self.line = Path(path), field, line
        where = _where(path, line)
        text = f"{where}: {field}: {problem}" if field else f"{where}: {problem}"
        super().__init__(f"{text}; {fix}" if fix else text)
        #: the file's other problems, found in the same pass (`kmodel validate` lists all)
        self.more: list[SpecError] = []


class YamlSyntaxError(SpecError):
    code = "KM100"


class UnknownModelError(KmodelError):
    code = "KM110"

    def __init__(self, name: str, searched: list[Path], known: list[str]) -> None:
        where = ", ".join(str(p) for p in searched) or "(no spec folders)"
        hint = f"known models: {', '.join(known)}" if known else "no models found"
        super().__init__(f"unknown model {name!r} (searched {where}); {hint}; "
                         "add model_specs/<name>/model.yaml or set KMODEL_PATH")


class UnknownEnvError(KmodelError):
    code = "KM111"

    def __init__(self, name: str, envs_dir: Path, known: list[str],
                 referenced_by: str | None = None) -> None:
        by = f" (named by {referenced_by})" if referenced_by else ""
        hint = f"known envs: {', '.join(known)}" if known else f"no envs in {envs_dir}"
        super().__init__(f"unknown env {name!r}{by}: no {envs_dir / (name + '.yaml')}; {hint}")


class UnsafePathError(SpecError):
    code = "KM120"


class UsageError(KmodelError):
    code = "KM002"
    exit_code = 2


# --- environments ------------------------------------------------------------------


class LockMissingError(KmodelError):
    code = "KM200"

    def __init__(self, env: str, lockfile: Path) -> None:
        super().__init__(f"env {env!r} has no lockfile {lockfile}; run `kmodel env lock {env}`")


class LockStaleError(KmodelError):
    code = "KM201"

    def __init__(self, env: str, spec: Path, lockfile: Path) -> None:
        folder = spec.parent
        where = "" if folder == Path("envs") or folder.resolve() == Path("envs").resolve() \
            else f"--envs {folder} "
        super().__init__(f"{lockfile} is stale: {spec} changed since it was locked; "
                         f"run `kmodel {where}env lock {env}`")


class EnvBuildError(KmodelError):
    code = "KM202"


class LockResolveError(KmodelError):
    code = "KM203"


class ChannelUnreachableError(KmodelError):
    code = "KM204"


class ToolMissingError(KmodelError):
    code = "KM205"


class HomeNotWritableError(KmodelError):
    code = "KM207"

    def __init__(self, home: Path, reason: str, fix: str | None = None) -> None:
        super().__init__(f"KMODEL_HOME {home} is not writable ({reason}); " + (
            fix or "set KMODEL_HOME to a folder you can write (built envs and caches live "
            "there), or make this one writable (chmod)"))


class EnvNotBuiltError(KmodelError):
    code = "KM206"

    def __init__(self, env: str, name: str) -> None:
        super().__init__(f"env {env!r} is not built; run `kmodel env create {name}`")


# --- weights and integrity ---------------------------------------------------------


class WeightsMissingError(KmodelError):
    code = "KM300"

    def __init__(self, model: str, path: Path, fix: str | None = None,
                 problem: str = "is missing") -> None:
        super().__init__(f"model {model!r}: weights file {path} {problem}; "
                         + (fix or "restore it or run `kmodel hash "
                            f"{model} --write` after retraining"))


class NotTrainedError(WeightsMissingError):
    """A weights folder that kmodel did not train (no hashes.json): missing, or another's."""

    def __init__(self, folder: Path) -> None:
        KmodelError.__init__(self, f"{folder} is not a weights folder kmodel trained (no "
                             "hashes.json in it); give the folder `kmodel train -o` or "
                             "`kmodel compose train -o` wrote")


class WeightsChangedError(KmodelError):
    code = "KM302"

    def __init__(self, model: str, spec: Path, count: int) -> None:
        super().__init__(f"{count} weight file(s) of model {model!r} differ from {spec}; run "
                         f"`kmodel hash {model} --write` if the change is intended")


class WeightsNotHashedError(KmodelError):
    code = "KM303"

    def __init__(self, model: str, spec: Path) -> None:
        super().__init__(f"the weights of model {model!r} are not hashed yet (sha256: {{}} in "
                         f"{spec}); run `kmodel hash {model} --write`")


class WeightsReloadError(KmodelError):
    """Weights that, loaded into a fresh model, do not reproduce the trained model's
    predictions (a piece of state that get_weights/save left out)."""

    code = "KM304"


class WeightFormatError(KmodelError):
    """A weight file of a format kmodel does not take: a pickle (by name or by content),
    an unknown suffix, or content that is not what its name says."""

    code = "KM305"


class HashMismatchError(KmodelError):
    code = "KM301"

    def __init__(self, path: Path, expected: str, found: str, fix: str) -> None:
        self.path, self.expected, self.found = path, expected, found
        super().__init__(f"{path}: sha256 mismatch: expected {expected[:16]}…, "
                         f"found {found[:16]}…; {fix}")


# --- inputs and outputs ------------------------------------------------------------


class BundleError(KmodelError):
    """A bundle that is not what `kmodel pack` wrote: changed, incomplete or unreadable."""

    code = "KM310"


class InputMissingError(KmodelError):
    code = "KM400"

    def __init__(self, path: Path, problem: str = "does not exist") -> None:
        super().__init__(f"input file {path} {problem}; check the path")


class InputSchemaError(KmodelError):
    code = "KM401"


class OutputNotWritableError(KmodelError):
    code = "KM402"

    def __init__(self, path: Path, reason: str, fix: str = "choose a writable location") -> None:
        self.path = path
        super().__init__(f"cannot write output {path}: {reason}; {fix}")


class ResumeMismatchError(KmodelError):
    code = "KM403"


class FileAccessError(KmodelError):
    """A file could not be read or written for a reason the OS gave (not one kmodel knew)."""

    code = "KM405"


class InputChangedError(KmodelError):
    """The input file changed while kmodel read it: the predictions would mix two inputs."""

    code = "KM404"


class ValuesChangedError(KmodelError):
    """A stored output's values differ from the checksum kmodel recorded as it wrote them."""

    code = "KM407"


class NewerFormatError(KmodelError):
    """A file written by a newer kmodel, in a format version this one cannot read."""

    code = "KM406"

    def __init__(self, source: str | Path, kind: str, found: object, reads: int) -> None:
        from kmodel._version import __version__

        super().__init__(f"{source} is in {kind} format version {found}, written by a newer "
                         f"kmodel; kmodel {__version__} reads versions up to {reads}: "
                         "upgrade kmodel, or make the file again with this one")


# --- running models ----------------------------------------------------------------


class ModelError(KmodelError):
    """The model's own code raised; detail holds its traceback."""

    code = "KM500"


class RunnerKilledError(KmodelError):
    code = "KM501"

    def __init__(self, what: str, then: str = "rerun, with --resume for predict", *,
                 detail: str | None = None) -> None:
        self.what = what
        super().__init__(f"{what}; {then}", detail=detail)


class RunnerError(KmodelError):
    """The runner failed before it could report why (a broken env, a crash in C code)."""

    code = "KM502"


class ModelContractError(KmodelError):
    """The model's code broke the runner's contract: it exited mid-way, returned arrays of
    the wrong shape or outputs the spec does not name, or left rows unwritten."""

    code = "KM503"


# --- composition -------------------------------------------------------------------


class IdAlignmentError(KmodelError):
    code = "KM600"


class TargetLengthError(KmodelError):
    """The targets do not fit the predictions: missing, of the wrong length or shape."""

    code = "KM601"


class TaskError(KmodelError):
    """Targets or predictions that do not fit the task (binary, multiclass, regression)."""

    code = "KM605"


class TrainingOverlapError(KmodelError):
    """The ensembler would be fitted on rows a base model was trained on (in-sample)."""

    code = "KM606"


class NotFiniteError(KmodelError):
    """NaN or inf in stored predictions or targets (an ensembler would learn NaN weights)."""

    code = "KM604"


class ShardError(KmodelError):
    """Shards that cannot be merged: from different runs, incomplete, overlapping or gapped."""

    code = "KM603"


class MixedInputsError(KmodelError):
    """Prediction files made from different input files were given to one composer step."""

    code = "KM602"


# --- workflow ----------------------------------------------------------------------


class WorkflowError(KmodelError):
    code = "KM700"


class Interrupted(KmodelError):
    """Ctrl-C (SIGINT, exit 130) or SIGTERM (exit 143, what SLURM and CI send)."""

    code = "KM800"

    def __init__(self, signum: int = 2,
                 what: str = "nothing half-made was kept under a final name") -> None:
        import signal

        self.signum = signum
        self.exit_code = 128 + signum
        name = signal.Signals(signum).name if signum in signal.Signals._value2member_map_ \
            else f"signal {signum}"
        super().__init__(f"interrupted by {name}; {what}")


class Terminated(KeyboardInterrupt):
    """Raised in the main thread when kmodel receives SIGTERM, so that every cleanup path
    written for Ctrl-C (``except KeyboardInterrupt``, ``finally``) runs for it too."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def signum_of(exc: BaseException) -> int:
    """The signal behind a KeyboardInterrupt: SIGTERM for Terminated, else SIGINT."""
    return exc.signum if isinstance(exc, Terminated) else 2


class InternalError(KmodelError):
    """A bug in kmodel: an exception nothing mapped to a clear message."""

    code = "KM900"


# --- mapping any exception to one of these --------------------------------------------


def write_error(path: Path, e: OSError) -> OutputNotWritableError:
    """The cause of a failed write, said plainly (a full disk, a file size limit, ...)."""
    reasons = {errno.ENOSPC: "no space left on the device",
               errno.EDQUOT: "disk quota exceeded",
               errno.EFBIG: "the file size limit was reached (ulimit -f)",
               errno.EROFS: "the filesystem is read-only",
               errno.ENAMETOOLONG: "the file name is too long"}
    reason = reasons.get(e.errno or 0, e.strerror or str(e))
    fix = {errno.ENOSPC: "free some space or choose another location",
           errno.EDQUOT: "free some space or choose another location",
           errno.EFBIG: "raise the limit or choose a smaller output"}.get(
        e.errno or 0, "choose a writable location")
    return OutputNotWritableError(path, reason, fix)


def as_error(e: BaseException) -> KmodelError | None:
    """The one-line error for any exception; None for those that must pass (SystemExit)."""
    if isinstance(e, KeyboardInterrupt):
        return Interrupted(signum_of(e))
    return of_exception(e) if isinstance(e, Exception) else None


def of_exception(e: Exception) -> KmodelError:
    """The one-line error for an exception: a KmodelError as it is; a signal that landed
    inside code that wrapped it (an import, say) as the signal; an OSError the OS raised
    with its file and cause; anything else as a bug in kmodel (KM900), in one line."""
    if isinstance(e, KmodelError):
        return e
    cause: BaseException | None = e
    while cause is not None:
        if isinstance(cause, KeyboardInterrupt):
            return Interrupted(signum_of(cause))
        cause = cause.__cause__ or cause.__context__
    if isinstance(e, OSError):
        if e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS) and e.filename:
            return write_error(Path(e.filename), e)
        where = f"{e.filename}: " if e.filename else ""
        return FileAccessError(f"{where}{e.strerror or e}; check the path and its permissions")
    return InternalError(f"unexpected {type(e).__name__}: {e}; this is a bug in kmodel: "
                         "rerun with -v and report the traceback")
