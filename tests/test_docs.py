"""Docs that cannot drift: every CLI command, every option and every error code appears in
the README."""

from __future__ import annotations

import re
from pathlib import Path

import click

from kmodel import errors
from kmodel.cli import cli

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()
GLOBAL = {"-v", "--verbose", "--specs", "--envs", "-h", "--help", "--version"}


def commands(group: click.Group, prefix: str = "kmodel") -> dict[str, click.Command]:
    found: dict[str, click.Command] = {}
    for name, cmd in group.commands.items():
        path = f"{prefix} {name}"
        found[path] = cmd
        if isinstance(cmd, click.Group):
            found |= commands(cmd, path)
    return found


def test_every_command_is_in_the_readme() -> None:
    missing = [path for path, cmd in commands(cli).items()
               if not isinstance(cmd, click.Group) and f"`{path}" not in README]
    assert missing == [], f"commands missing from the README: {missing}"


def test_every_option_is_in_the_readme() -> None:
    missing = []
    for path, cmd in commands(cli).items():
        for param in cmd.params:
            if isinstance(param, click.Option):
                names = [n for n in param.opts if n not in GLOBAL]
                if names and not any(re.search(rf"(?<![\w-]){re.escape(n)}\b", README)
                                     for n in names):
                    missing.append(f"{path} {names[0]}")
    assert missing == [], f"options missing from the README: {missing}"


def test_every_error_code_is_in_the_readme() -> None:
    codes = {cls.code for cls in vars(errors).values()
             if isinstance(cls, type) and issubclass(cls, errors.KmodelError)
             and cls is not errors.KmodelError}
    missing = sorted(c for c in codes if f"| {c} |" not in README)
    assert missing == [], f"error codes missing from the README's catalogue: {missing}"
