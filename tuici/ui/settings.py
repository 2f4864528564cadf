"""The control center's own settings, in ``$XDG_CONFIG_HOME/tuici/settings.toml``: the theme it remembers, and
the keys you rebind in a ``[keymap]`` table (binding id = "keys").

A broken file is reported and ignored, never fatal; a bad keymap entry is reported (file, key, problem) and
skipped, the others kept. The app writes only the theme line, leaving the rest of the file as you wrote it.
"""

from __future__ import annotations

import json
import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from textual.keys import REPLACED_KEYS, Keys, key_to_character

from .actions import ACTIONS

MODIFIERS = ("ctrl", "shift", "alt", "meta", "super", "hyper")
_KEY_NAMES = frozenset(key.value for key in Keys)


class SettingsError(Exception):
    pass


@dataclass
class Settings:
    theme: str | None = None
    keymap: dict[str, str] = field(default_factory=dict)  # binding id -> keys, as Textual's set_keymap takes them
    problems: list[str] = field(default_factory=list)  # entries skipped, each naming the file and the key


def config_dir() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return Path(base) / "tuici"


def settings_file() -> Path:
    return config_dir() / "settings.toml"


def load_settings() -> Settings:
    """The saved settings; defaults when there are none. ``SettingsError`` names a broken file."""
    path = settings_file()
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return Settings()
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise SettingsError(f"{path}: {exc}") from None
    theme = data.get("theme")
    if theme is not None and not isinstance(theme, str):
        raise SettingsError(f"{path}: key 'theme': must be a string")
    settings = Settings(theme=theme)
    keymap = data.get("keymap", {})
    if not isinstance(keymap, dict):
        settings.problems.append(f"{path}: key 'keymap': must be a table of binding id = \"keys\"")
        return settings
    for binding_id, keys in keymap.items():
        problem = _keymap_problem(binding_id, keys, keymap)
        if problem:
            settings.problems.append(f"{path}: key 'keymap.{binding_id}': {problem}")
        else:
            settings.keymap[binding_id] = ",".join(key.strip() for key in keys.split(","))
    return settings


def _keymap_problem(binding_id: str, keys: object, keymap: dict) -> str | None:
    """What is wrong with one ``[keymap]`` entry, if anything."""
    action = next((a for a in ACTIONS if a.id == binding_id), None)
    if action is None:
        return "no action has this id (the help screen, ?, lists them)"
    if not isinstance(keys, str) or not keys.strip():
        return 'must be a string of keys, comma separated, like "R" or "ctrl+r,f5"'
    for key in (key.strip() for key in keys.split(",")):
        if not is_key(key):
            return f"{key!r} is not a key Textual knows (like R, ctrl+r, f5, enter, slash)"
        for other in ACTIONS:
            other_keys = keymap.get(other.id, other.keys) if other.id != binding_id else ""
            if other.scope == action.scope and isinstance(other_keys, str) and key in other_keys.split(","):
                return f"{key!r} is the key of {other.id} already"
    return None


def is_key(key: str) -> bool:
    """Whether ``key`` names a key as Textual's bindings do: a character or a key name, after modifiers."""
    *modifiers, base = key.split("+")
    if any(modifier not in MODIFIERS for modifier in modifiers) or not base:
        return False
    return (len(base) == 1 or base in _KEY_NAMES or base in REPLACED_KEYS
            or key_to_character(base) is not None)


_THEME_LINE = re.compile(r"\s*theme\s*=")


def with_theme(text: str, theme: str | None) -> str:
    """``text`` (a settings file) with its theme set to ``theme`` (None: removed), the rest left as it was."""
    lines = text.splitlines()
    top = next((i for i, line in enumerate(lines) if line.lstrip().startswith("[")), len(lines))
    at = next((i for i in range(top) if _THEME_LINE.match(lines[i])), None)
    new = [f"theme = {json.dumps(theme)}"] if theme else []
    if at is None:
        lines[0:0] = new
    else:
        lines[at:at + 1] = new
    return "".join(line + "\n" for line in lines)


def save_settings(settings: Settings) -> None:
    """Write the theme, keeping the rest of the file, atomically (does disk work: call it from a worker
    thread)."""
    path = settings_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        text = ""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(with_theme(text, settings.theme), encoding="utf-8")
    tmp.replace(path)
