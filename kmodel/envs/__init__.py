"""Environment backends: pick the one an env spec needs; lock, build and look at envs by
name (what `kmodel env ...` does)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from kmodel import formats
from kmodel._fs import guard_output
from kmodel.envs.base import Env, EnvBackend, EnvStatus
from kmodel.errors import EnvNotBuiltError
from kmodel.registry import EnvRef, Registry


def backend_for(ref: EnvRef[Any]) -> EnvBackend[Any]:
    """uv for pip specs (stdlib venv + pip when uv is absent); py-rattler for conda specs."""
    if ref.spec.kind == "conda":
        from kmodel.envs.conda import CondaBackend

        return CondaBackend()
    from kmodel.envs.uv import UvBackend, VenvBackend, uv_binary

    uv = uv_binary()
    return UvBackend(uv) if uv else VenvBackend()


def create(registry: Registry, names: Sequence[str] = (), *, every: bool = False,
           record: Path | None = None) -> list[Env]:
    """Build the envs named (by env or model name; ``every``: all), a no-op for those
    built; with ``record``, also write where they are (an ``env-record`` document, for
    workflows: one env's record, or a list)."""
    refs = registry.env_refs(names, every=every)
    if record is not None:
        guard_output(record, registry.owned_files())
    built = [backend_for(ref).ensure(ref) for ref in refs]
    if record is not None:
        rows = [{"env": e.name, "prefix": str(e.prefix), "key": e.key} for e in built]
        formats.write(record, "env-record", rows[0] if len(rows) == 1 else {"envs": rows})
    return built


def path_of(registry: Registry, name: str) -> Path:
    """The folder of a built env (by env or model name); KM206 if it is not built."""
    (ref,) = registry.env_refs([name])
    status = backend_for(ref).status(ref)
    if not status.built or status.prefix is None:
        raise EnvNotBuiltError(ref.name, name)
    return status.prefix


def statuses(registry: Registry) -> list[EnvStatus]:
    """Every env: locked, drifted from its spec, built."""
    return [backend_for(ref).status(ref) for ref in registry.env_refs(every=True)]


__all__ = ["Env", "EnvBackend", "EnvStatus", "backend_for", "create", "path_of", "statuses"]
