"""The command line: errors become messages and exit codes in one place."""

from __future__ import annotations

import ast
import re
import typing
from pathlib import Path
from typing import Literal

import msgspec

from tuici import wire as p

from conftest import tuici

ROOT = Path(__file__).resolve().parent.parent


def test_nothing_below_the_cli_exits_the_process():
    """Errors are raised typed; only ``cli.main`` turns them into an exit (and argparse, for its usage)."""
    exits = []
    for path in sorted((ROOT / "tuici").rglob("*.py")):
        if path.name == "cli.py" and path.parent.name == "tuici":
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Name) and node.id == "SystemExit" or (
                    isinstance(node, ast.Attribute) and node.attr == "exit" and getattr(node.value, "id", "") == "sys"):
                exits.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert exits == []


def test_a_refusal_is_a_message_and_an_exit_status_not_a_traceback(repo, cluster):
    wrong = tuici("status", cwd=repo.path, check=False, TUICI_TOKEN="not-the-token")
    assert wrong.returncode == 1 and wrong.stderr == "tuici: wrong token\n"


def test_a_component_names_itself_in_its_message(tmp_path):
    bad = tuici("runner", "--dispatcher", "unix:relative", "--token", "t", cwd=tmp_path, check=False)
    assert bad.returncode == 2 and bad.stderr.startswith("tuici runner: --dispatcher: address 'unix:relative'")


def _readme_status_schema() -> dict[str, str]:
    """The README's `status --json` block: each top-level key, and what it says of its value."""
    block = (ROOT / "README.md").read_text().split("### `status --json`", 1)[1].split("```")[1]
    return dict(re.findall(r'"(\w+)":\s*(\[\{.*?\}\]|\{.*?\}|[^,\s]+)', block, re.S))


def _described(struct: type[msgspec.Struct]) -> list[str]:
    """Each field of ``struct`` as the schema shows it: its name, and its values when they are a Literal."""
    return [f.name + (": " + "|".join(v for v in typing.get_args(f.type) if v)
                      if typing.get_origin(f.type) is Literal else "")
            for f in msgspec.structs.fields(struct)]


def test_the_readme_status_schema_is_the_structs():
    readme = _readme_status_schema()
    assert readme.pop("type") == f'"{p.StatusReply.__struct_config__.tag}"'
    fields = {f.name: f.type for f in msgspec.structs.fields(p.StatusReply)}
    assert set(readme) == set(fields)
    for name, shown in readme.items():
        if typing.get_origin(fields[name]) is list:
            items = [" ".join(item.split()) for item in shown[2:-2].split(",")]
            assert items == _described(typing.get_args(fields[name])[0]), name
        elif isinstance(fields[name], type) and issubclass(fields[name], msgspec.Struct):
            assert [" ".join(item.split()) for item in shown[1:-1].split(",")] == _described(fields[name]), name
        else:
            assert shown == fields[name].__name__, name


def test_status_help_is_made_from_the_structs():
    shown = " ".join(tuici("status", "--help", cwd=ROOT).stdout.split())
    for name, kind in ((f.name, f.type) for f in msgspec.structs.fields(p.StatusReply)):
        assert f" {name} " in shown
        struct = typing.get_args(kind)[0] if typing.get_origin(kind) is list else kind
        for item in _described(struct) if isinstance(struct, type) and issubclass(struct, msgspec.Struct) else ():
            assert item in shown, item
