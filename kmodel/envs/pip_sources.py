"""Package sources for uv, taken from the user's own pip configuration.

uv does not read pip's configuration files, so users behind a mirror would silently get
different packages. We map pip's index-url / extra-index-url / find-links / cert (from
``pip config list`` and PIP_* variables) onto uv's variables (and SSL_CERT_FILE).
"""

from __future__ import annotations

import functools
import os
import subprocess
import sys
import threading

from kmodel import _subprocess
from kmodel.errors import ToolMissingError

_MAP = {"index-url": "UV_INDEX_URL", "extra-index-url": "UV_EXTRA_INDEX_URL",
        "find-links": "UV_FIND_LINKS", "cert": "SSL_CERT_FILE"}


@functools.cache
def pip_config() -> dict[str, str]:
    """pip's effective settings for the three source keys (env vars override files)."""
    found: dict[str, str] = {}
    try:
        out = _subprocess.run([sys.executable, "-m", "pip", "config", "list"], timeout=30).stdout
    except (ToolMissingError, subprocess.SubprocessError):
        out = ""  # no pip in this interpreter: PIP_* variables still count (an interrupt
        # is not caught here: it stops the command)
    for line in out.splitlines():
        key, _, value = line.partition("=")
        name = key.rsplit(".", 1)[-1]
        if name in _MAP and not key.startswith(":env:"):
            found[name] = value.strip().strip("'\"")
    for name in _MAP:
        if v := os.environ.get("PIP_" + name.upper().replace("-", "_")):
            found[name] = v
    return found


_config_lock = threading.Lock()


def uv_environment() -> dict[str, str]:
    """os.environ plus the UV_* settings that make uv use pip's sources, offline-safe."""
    env = dict(os.environ)
    with _config_lock:  # asked by several threads at once: pip is run once
        config = pip_config()
    for name, value in config.items():
        var = _MAP[name]
        if var not in env:
            # pip separates several values with whitespace; uv wants spaces too
            env[var] = " ".join(value.split())
    env.setdefault("UV_INDEX_STRATEGY", "unsafe-best-match")
    env["UV_PYTHON_DOWNLOADS"] = "never"
    env.setdefault("UV_COMPILE_BYTECODE", "1")
    return env
