"""Colour themes: TOML files loaded into Textual themes, each with colours for job states.

Bundled themes live in ``themes/`` at the top of the repository; a wheel installs them inside
the package as ``tuici/themes`` (pyproject.toml maps one onto the other). Users may add their
own in ``$XDG_CONFIG_HOME/tuici/themes``. A file that cannot be used is reported by name with
its problem and skipped, so one bad theme never stops the app.
"""

from __future__ import annotations

import tomllib
from dataclasses import fields
from pathlib import Path

from textual.color import Color, ColorParseError
from textual.theme import Theme

from .formatting import STATE_VARIABLES
from .settings import config_dir

DEFAULT_THEME = "tuici-dark"
_PACKAGE = Path(__file__).resolve().parent.parent
_COLOUR_KEYS = ("primary", "secondary", "warning", "error", "success", "accent", "foreground", "background",
                "surface", "panel", "boost")
_KNOWN_KEYS = {f.name for f in fields(Theme)}


class ThemeFileError(Exception):
    pass


def theme_dirs() -> list[Path]:
    """Where themes are looked for, in order: the user's, then the bundled ones."""
    return [config_dir() / "themes", bundled_dir()]


def bundled_dir() -> Path:
    """The bundled themes: inside an installed package, else at the top of the source tree (an editable install)."""
    installed = _PACKAGE / "themes"
    return installed if installed.is_dir() else _PACKAGE.parent / "themes"


def load_theme_file(path: Path) -> Theme:
    """The theme in one TOML file; ``ThemeFileError`` says what is wrong with it."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise ThemeFileError(f"cannot read it: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ThemeFileError(f"invalid TOML: {exc}") from None
    unknown = sorted(set(data) - _KNOWN_KEYS)
    if unknown:
        raise ThemeFileError(f"unknown key '{unknown[0]}'")
    for key in ("name", "primary"):
        if not isinstance(data.get(key), str) or not data[key].strip():
            raise ThemeFileError(f"key '{key}' is required and must be a string")
    for key in _COLOUR_KEYS:
        if key in data:
            _check_colour(key, data[key])
    if not isinstance(data.get("dark", True), bool):
        raise ThemeFileError("key 'dark' must be true or false")
    variables = data.get("variables", {})
    if not isinstance(variables, dict) or not all(isinstance(v, str) for v in variables.values()):
        raise ThemeFileError("[variables] must be a table of strings")
    for key in STATE_VARIABLES:
        if key in variables:
            _check_colour(f"variables.{key}", variables[key])
    try:
        return Theme(**data)
    except (TypeError, ValueError) as exc:
        raise ThemeFileError(str(exc)) from None


def _check_colour(key: str, value: object) -> None:
    try:
        if not isinstance(value, str):
            raise ColorParseError(f"{value!r} is not a string")
        Color.parse(value)
    except ColorParseError:
        raise ThemeFileError(f"key '{key}': {value!r} is not a colour") from None


def load_themes(dirs: list[Path]) -> tuple[list[Theme], list[str]]:
    """Every usable theme in ``dirs`` (the first of a name wins) and a message per unusable file."""
    themes: dict[str, Theme] = {}
    problems = []
    for directory in dirs:
        for path in sorted(directory.glob("*.toml")) if directory.is_dir() else ():
            try:
                theme = load_theme_file(path)
            except ThemeFileError as exc:
                problems.append(f"Theme file {path}: {exc}")
                continue
            themes.setdefault(theme.name, theme)
    return list(themes.values()), problems


def state_colours(theme: Theme) -> dict[str, str]:
    """Job-state colours for a theme that does not set them (Textual's own themes): from its palette."""
    palette = theme.to_color_system().generate()
    foreground = Color.parse(palette["foreground"])
    background = Color.parse(palette["background"])
    muted = foreground.blend(background, 0.45).hex
    return {
        "pass": palette["success"],
        "fail": palette["error"],
        "running": palette["primary"] if theme.primary != theme.success else palette["accent"],
        "queued": muted,
        "errored": palette["warning"],
        "cancelled": muted,
    }
