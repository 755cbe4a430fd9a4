"""Every `fersnet …` command line in README's bash blocks parses with the CLI's own parser, as written.

Parsing only (click's make_context): options the command does not take, misspelt choices and missing
arguments fail here; nothing runs. Pseudo-syntax lines (`a | b`, `[OPTIONS]`, `...`) are skipped.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import click
import pytest
import typer

from fersnet_ray.cli import app

README = Path(__file__).resolve().parents[1] / "README.md"


def _command_lines() -> list[str]:
    lines, out = [], []
    for block in re.findall(r"```bash\n(.*?)```", README.read_text(), flags=re.S):
        joined = block.replace("\\\n", " ")
        lines += [ln.strip() for ln in joined.splitlines()]
    for ln in lines:
        ln = re.sub(r"\s+#.*$", "", ln)  # trailing comment
        for part in re.split(r"\s*(?:&&|;)\s*", ln):
            part = re.sub(r"^\S+=\S+\s+", "", part.strip())  # VAR=value prefix
            if part.startswith("fersnet ") and not re.search(r"\||\[[A-Z]|\.\.\.|…", part):
                out.append(part)
    return out


COMMANDS = _command_lines()


def test_readme_has_commands_to_check():
    assert len(COMMANDS) >= 10


def _parse(group: click.Group, argv: list[str]) -> None:
    if not argv or argv[0].startswith("-"):  # the group's own options, e.g. `fersnet --version`
        group.make_context("fersnet", list(argv), help_option_names=[])
        return
    name, rest = argv[0], argv[1:]
    assert name in group.commands, f"no command {name!r}"
    cmd = group.commands[name]
    if isinstance(cmd, click.Group):  # `fersnet jobs logs ID`
        _parse(cmd, rest)
        return
    ctx = cmd.make_context(name, list(rest), help_option_names=[])
    if name == "submit":  # the stage's own arguments after STAGE are the stage's to parse
        _parse(group, [ctx.params["stage"], *ctx.args])


@pytest.mark.parametrize("line", COMMANDS)
def test_readme_command_parses(line):
    _parse(typer.main.get_command(app), shlex.split(line)[1:])
