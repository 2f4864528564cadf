"""The command line: errors become messages and exit codes in one place."""

from __future__ import annotations

import ast
from pathlib import Path

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
    assert bad.returncode == 2 and bad.stderr.startswith("tuici runner: address 'unix:relative'")
