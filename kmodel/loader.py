"""Loading spec documents: a model spec, an env spec, a composition config.

Each document is validated by kmodel/_schema.py (pydantic, strict, no unknown keys; errors
say ``file:line: field: problem; fix``) the first time kmodel sees its content; the
validated result is cached in KMODEL_HOME by the content's sha256 and the validating
code's, so later commands load it as JSON without importing pydantic or YAML (100 ms of
every start). The types built are kmodel/spec.py's dataclasses.
"""

from __future__ import annotations

import contextlib
import functools
import json
from pathlib import Path
from typing import Any, Literal

from kmodel._fs import atomic_write_text, home_folder, kmodel_home, sha256_bytes
from kmodel._version import __version__
from kmodel.spec import (
    ComposeConfig,
    CondaEnvSpec,
    ModelSpec,
    PipEnvSpec,
    check_model_paths,
    env_from_dict,
    read_text,
)

Doc = Literal["model", "env", "compose"]
#: the cache's own format: an entry is the validated document as JSON (bump to drop all)
CACHE_FORMAT = 1


@functools.cache
def _rules() -> str:
    """What decides whether a document is valid: kmodel's version and the source of the
    types and of their validators (an edited checkout validates its specs anew)."""
    here = Path(__file__).parent
    try:
        source = b"".join((here / name).read_bytes() for name in ("spec.py", "_schema.py"))
    except OSError:
        source = b""
    return f"{CACHE_FORMAT}|{__version__}|{sha256_bytes(source)}"


def _load(path: Path, doc: Doc, build: Any) -> Any:
    """The document at ``path`` built by ``build`` from its validated data: from the cache
    when this content was validated before by the same rules (``_rules``), else validated
    (kmodel/_schema.py) and cached. A cache that cannot be read or written only costs speed;
    a damaged entry is validated anew."""
    text = read_text(path)
    key = sha256_bytes(f"{doc}|{_rules()}|{text}".encode())
    name = f"{key[:40]}.json"
    with contextlib.suppress(OSError, ValueError, TypeError, KeyError, AttributeError):
        return build(json.loads((kmodel_home() / "spec-cache" / name).read_bytes()))
    from kmodel import _schema  # pydantic and YAML: only for content not seen before

    data = _schema.validate(doc, path, text)
    built = build(data)
    with contextlib.suppress(Exception):
        atomic_write_text(home_folder("spec-cache") / name, json.dumps(data))
    return built


def load_model_spec(path: Path) -> ModelSpec:
    spec: ModelSpec = _load(path, "model", ModelSpec.from_dict)
    check_model_paths(spec, path)
    return spec


def load_env_spec(path: Path) -> PipEnvSpec | CondaEnvSpec:
    spec: PipEnvSpec | CondaEnvSpec = _load(path, "env", env_from_dict)
    return spec


def load_compose_config(path: Path) -> ComposeConfig:
    cfg: ComposeConfig = _load(path, "compose", ComposeConfig.from_dict)
    return cfg


def compose_config(data: Any, source: str = "the kmodel config") -> ComposeConfig:
    """A composition given as data (a Snakemake module's config), with the same errors."""
    from kmodel import _schema

    return ComposeConfig.from_dict(_schema.validate_data("compose", data, source))


def raw_mapping(path: Path) -> dict[str, Any] | None:
    """The spec file as a plain mapping (read safely, not validated), or None."""
    from kmodel import _schema

    return _schema.raw_mapping(path)
