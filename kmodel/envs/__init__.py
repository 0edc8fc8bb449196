"""Environment backends: pick the one an env spec needs."""

from __future__ import annotations

from kmodel.envs.base import Env, EnvBackend, EnvStatus
from kmodel.registry import EnvRef


def backend_for(ref: EnvRef) -> EnvBackend:
    """uv for pip specs (stdlib venv + pip when uv is absent); py-rattler for conda specs."""
    if ref.spec.kind == "conda":
        from kmodel.envs.conda import CondaBackend

        return CondaBackend()
    from kmodel.envs.uv import UvBackend, VenvBackend, uv_binary

    uv = uv_binary()
    return UvBackend(uv) if uv else VenvBackend()


__all__ = ["Env", "EnvBackend", "EnvStatus", "backend_for"]
