"""The control center's remembered choices, in ``$XDG_CONFIG_HOME/tuici/settings.toml``.

Only the theme today. The file is small and written whole; a broken one is reported and
ignored, never fatal.
"""

from __future__ import annotations

import json
import os
import tomllib
from dataclasses import dataclass
from pathlib import Path


class SettingsError(Exception):
    pass


@dataclass
class Settings:
    theme: str | None = None


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
    return Settings(theme=theme)


def save_settings(settings: Settings) -> None:
    """Write the settings atomically (does disk work: call it from a worker thread)."""
    path = settings_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [f"theme = {json.dumps(settings.theme)}"] if settings.theme else []
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    tmp.replace(path)
