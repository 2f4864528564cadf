"""The command line: errors become messages and exit codes in one place."""

from __future__ import annotations

import ast
import re
import subprocess
import typing
from pathlib import Path
from typing import Literal

import msgspec

from tuici import wire as p
from tuici.cli import COMMANDS

from conftest import _env, tuici

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


def test_version_and_a_help_that_shows_the_control_centers_options_and_every_command(tmp_path):
    version = tuici("--version", cwd=tmp_path)
    assert re.fullmatch(r"tuici \d+\.\d+\.\d+\n", version.stdout)
    shown = tuici("--help", cwd=tmp_path).stdout
    assert shown.startswith("usage: tuici") and tuici("-h", cwd=tmp_path).stdout == shown
    for option in ("REPO", "--runners N", "--theme NAME", "--sandbox", "--version"):
        assert option in shown, option
    listed = re.findall(r"^  (\w+) +\S", shown.split("commands (", 1)[1], re.M)
    assert listed == list(COMMANDS)


def _completion_script(shell: str, tmp_path: Path) -> Path:
    script = tmp_path / f"tuici.{shell}"
    script.write_text(tuici("completion", shell, cwd=tmp_path).stdout)
    return script


def test_bash_sources_the_completion_and_completes_commands_and_options(tmp_path):
    script = _completion_script("bash", tmp_path)
    probe = f"""
source {script}
complete_words() {{
    COMP_WORDS=("$@"); COMP_CWORD=$(( $# - 1 )); COMP_LINE="$*"; COMP_POINT=${{#COMP_LINE}}; COMPREPLY=()
    _shtab_tuici tuici "${{COMP_WORDS[COMP_CWORD]}}" "${{COMP_WORDS[COMP_CWORD-1]}}"
    echo "${{COMPREPLY[*]}}"
}}
complete -p tuici
complete_words tuici wa
complete_words tuici wait --t
complete_words tuici status --exit
complete_words tuici completion z
"""
    done = subprocess.run(["bash", "-c", probe], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    registered, *replies = done.stdout.splitlines()
    assert registered == "complete -o bashdefault -F _shtab_tuici tuici"
    assert replies == ["wait", "--timeout", "--exit-status", "zsh"]


def test_zsh_completes_a_command_in_a_real_line_editor(tmp_path):
    """An interactive zsh on a pseudo-terminal (zpty), the script on its fpath: TAB after `tuici wa` gives
    `tuici wait`, which the line then echoes. The rest of the line is typed only once zle has shown the completion:
    typed ahead on a loaded machine, it reached a zle that was not reading yet. (.ci/run installs zsh.)"""
    (tmp_path / "zfunc").mkdir()
    _completion_script("zsh", tmp_path).rename(tmp_path / "zfunc" / "_tuici")
    driver = r"""
zmodload zsh/zpty
zpty z zsh -f -i
zpty -w z "PROMPT='>'; fpath=(FPATH \$fpath); autoload -U compinit; compinit -u -D; tuici() { :; }"
zpty -w z "echo READY"
zpty -r z line '*READY*'
zpty -r z line '*READY*'
zpty -w -n z $'tuici wa\t'
zpty -r z line '*wait*'
zpty -w -n z $'\x01echo COMPLETED: \x05\n'
zpty -r z line '*COMPLETED: *'
zpty -r z line '*>*'
print -r -- "$line"
zpty -d z
""".replace("FPATH", str(tmp_path / "zfunc"))
    done = subprocess.run(["zsh", "-f", "-c", driver], capture_output=True, text=True, timeout=60,
                          env={**_env(), "TERM": "xterm"})
    assert done.returncode == 0, done.stderr
    assert "tuici wait" in done.stdout.splitlines()[0], done.stdout
