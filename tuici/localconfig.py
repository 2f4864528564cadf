"""A repository's local settings: ``<repo>/.git/tuici/config.toml``, written by the user and never committed.

What runs a command on this machine outside the sandbox (``notify_command``) and what deletes history
(``keep_days``, ``keep_bytes``) is read from here only, never from ``tuici.toml``: that one is committed content,
which in tuici is untrusted (a branch's commits run only in the sandbox), and a commit could otherwise run a
command as the user, or have every other branch's history deleted. The file lives in the state dir, which every
job's sandbox hides. Each process reads it when it starts: the dispatcher (the hook, retention), ``serve`` and the
control center (``notify``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import msgspec

from .config import check_command, command_argv, convert, parse_toml
from .errors import ConfigError
from .sizes import parse_size
from .statedir import StateDir

DEFAULT_KEEP_DAYS = 30.0
DEFAULT_KEEP_BYTES = 2 * 1024**3
DEFAULT_NOTIFY_TIMEOUT = 30.0


class _File(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    notify: bool = True
    notify_command: str | list[str] | None = None
    notify_timeout: float = DEFAULT_NOTIFY_TIMEOUT
    keep_days: float = DEFAULT_KEEP_DAYS
    keep_bytes: int | str = DEFAULT_KEEP_BYTES


@dataclass(frozen=True)
class LocalConfig:
    notify: bool = True  # a desktop notification (serve) and the bell (control center) on a branch change
    notify_command: tuple[str, ...] = ()  # argv of the hook run on each notification; () for none
    notify_timeout: float = DEFAULT_NOTIFY_TIMEOUT  # seconds before the hook is killed
    keep_days: float = DEFAULT_KEEP_DAYS  # job logs and events older than this are deleted (inf: never)
    keep_bytes: int = DEFAULT_KEEP_BYTES  # job logs beyond this size are deleted, oldest first


def load(state: StateDir) -> LocalConfig:
    """The settings in ``state``'s config file, defaults for what it leaves out (or for no file). A file that
    is not valid raises ConfigError naming the file, the key and the problem. Reads the disk: keep it off an
    event loop."""
    path = state.local_config
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return LocalConfig()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read it: {exc.strerror or exc}") from None
    name = str(path)
    data = convert(parse_toml(raw, name), _File, name)
    check_command(data.notify_command, "notify_command", name)
    if not 0 < data.notify_timeout < math.inf:
        raise ConfigError(f"{name}: key 'notify_timeout': must be a positive, finite number of seconds")
    if not data.keep_days > 0:  # NaN too; inf keeps everything
        raise ConfigError(f"{name}: key 'keep_days': must be a positive number of days (inf: keep everything)")
    keep_bytes = data.keep_bytes
    if isinstance(keep_bytes, str):
        try:
            keep_bytes = parse_size(keep_bytes)
        except ValueError:
            raise ConfigError(f"{name}: key 'keep_bytes': {data.keep_bytes!r} is not a size (like 2G or 500M)") \
                from None
    if keep_bytes <= 0:
        raise ConfigError(f"{name}: key 'keep_bytes': must be a positive size")
    return LocalConfig(
        notify=data.notify,
        notify_command=tuple(command_argv(data.notify_command)) if data.notify_command is not None else (),
        notify_timeout=data.notify_timeout, keep_days=data.keep_days, keep_bytes=keep_bytes,
    )
