"""The error catalogue: every user-facing failure is a KmodelError with a stable code.

Each error builds a one-line message naming the file, field or value involved and how
to fix it. The CLI prints ``Error [CODE]: message`` and exits with ``exit_code``;
tracebacks are shown only with ``-v``.
"""

from __future__ import annotations

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
        super().__init__(f"{lockfile} is stale: {spec} changed since it was locked; "
                         f"run `kmodel env lock {env}`")


class EnvBuildError(KmodelError):
    code = "KM202"


class LockResolveError(KmodelError):
    code = "KM203"


class ChannelUnreachableError(KmodelError):
    code = "KM204"


class ToolMissingError(KmodelError):
    code = "KM205"


class EnvNotBuiltError(KmodelError):
    code = "KM206"

    def __init__(self, env: str, name: str) -> None:
        super().__init__(f"env {env!r} is not built; run `kmodel env create {name}`")


# --- weights and integrity ---------------------------------------------------------


class WeightsMissingError(KmodelError):
    code = "KM300"

    def __init__(self, model: str, path: Path, fix: str | None = None) -> None:
        super().__init__(f"model {model!r}: weights file {path} is missing; "
                         + (fix or "restore it or run `kmodel hash "
                            f"{model} --write` after retraining"))


class WeightsChangedError(KmodelError):
    code = "KM302"

    def __init__(self, model: str, spec: Path, count: int) -> None:
        super().__init__(f"{count} weight file(s) of model {model!r} differ from {spec}; run "
                         f"`kmodel hash {model} --write` if the change is intended")


class HashMismatchError(KmodelError):
    code = "KM301"

    def __init__(self, path: Path, expected: str, found: str, fix: str) -> None:
        self.path, self.expected, self.found = path, expected, found
        super().__init__(f"{path}: sha256 mismatch: expected {expected[:16]}…, "
                         f"found {found[:16]}…; {fix}")


# --- inputs and outputs ------------------------------------------------------------


class InputMissingError(KmodelError):
    code = "KM400"

    def __init__(self, path: Path) -> None:
        super().__init__(f"input file {path} does not exist; check the path")


class InputSchemaError(KmodelError):
    code = "KM401"


class OutputNotWritableError(KmodelError):
    code = "KM402"

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"cannot write output {path}: {reason}; choose a writable location")


class ResumeMismatchError(KmodelError):
    code = "KM403"


# --- running models ----------------------------------------------------------------


class ModelError(KmodelError):
    """The model's own code raised; detail holds its traceback."""

    code = "KM500"


class RunnerKilledError(KmodelError):
    code = "KM501"


class RunnerError(KmodelError):
    """The runner failed before it could report why (a broken env, a crash in C code)."""

    code = "KM502"


# --- composition -------------------------------------------------------------------


class IdAlignmentError(KmodelError):
    code = "KM600"


class TargetLengthError(KmodelError):
    code = "KM601"


# --- workflow ----------------------------------------------------------------------


class WorkflowError(KmodelError):
    code = "KM700"


class Interrupted(KmodelError):
    code = "KM800"
    exit_code = 130

    def __init__(self) -> None:
        super().__init__("interrupted; temporary files were removed")
