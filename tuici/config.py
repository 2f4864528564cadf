"""A repository's tuici configuration: ``tuici.toml``, or ``[tool.tuici]`` in ``pyproject.toml``.

Errors name the file, the key and the problem, so a broken config fails its job
with a message the user can act on.
"""

from __future__ import annotations

import fnmatch
import math
import re
import tomllib
from typing import TYPE_CHECKING, Callable, TypeVar

import msgspec

from .errors import ConfigError
from .wire.messages import Order

if TYPE_CHECKING:
    import git

DEFAULT_COMMAND = ["python", "-m", "pytest"]
DEFAULT_TIMEOUT = 3600.0
DEFAULT_CACHE_KEY = ["pyproject.toml", "requirements*.txt", "uv.lock", "setup.cfg", "setup.py"]
MAX_RETRY_FAILED = 10
MAX_CONFIG_BYTES = 1 << 20  # a config file larger than this is an error, not something to read into memory


class RepoConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    command: str | list[str] = msgspec.field(default_factory=lambda: list(DEFAULT_COMMAND))
    timeout: float = DEFAULT_TIMEOUT
    env: dict[str, str] = {}
    branches: list[str] = msgspec.field(default_factory=lambda: ["*"])
    coalesce: bool = False
    cancel_superseded: bool = False  # a newer commit cancels the branch's older queued jobs
    order: Order = "newest-first"  # which of a branch's queued new commits goes first when runners are scarce
    first_parent: bool = False  # true: only the commits of the branch's first-parent chain get a job
    setup: str | list[str] | None = None  # run first, in a virtualenv made (and kept) for the job
    python: str | None = None  # the interpreter that virtualenv is made from (default: tuici's own)
    cache_key: list[str] = msgspec.field(default_factory=lambda: list(DEFAULT_CACHE_KEY))
    network: bool = True  # false: the job's own network namespace, with only loopback
    retry_failed: int = 0  # run the failing tests again (by pytest node id) up to this many times

    @property
    def argv(self) -> list[str]:
        """The command as an argument vector: a string runs through the shell, a list does not."""
        return command_argv(self.command)

    @property
    def setup_argv(self) -> list[str] | None:
        return None if self.setup is None else command_argv(self.setup)

    def watches(self, branch: str) -> bool:
        return any(fnmatch.fnmatchcase(branch, pattern) for pattern in self.branches)


def command_argv(command: str | list[str]) -> list[str]:
    """A string runs through /bin/sh; a list runs as is."""
    return ["/bin/sh", "-c", command] if isinstance(command, str) else list(command)


_PATH = re.compile(r"at `\$\.?(.*)`")
T = TypeVar("T", bound=msgspec.Struct)


def convert(data: dict, kind: type[T], filename: str) -> T:
    """``data`` as the struct ``kind``; a ConfigError naming the file, the key and the problem otherwise."""
    try:
        return msgspec.convert(data, kind)
    except msgspec.ValidationError as exc:
        text = str(exc)
        match = _PATH.search(text)
        key = match.group(1) if match else "?"
        problem = _PATH.sub("", text).strip(" -")
        if "Object contains unknown field" in text:
            key = text.split("`")[1]
            problem = "unknown key"
        raise ConfigError(f"{filename}: key '{key}': {problem}") from None


def check_command(command: str | list[str] | None, key: str, filename: str) -> None:
    """ConfigError unless ``command`` (None: not given) is one that can run."""
    if command is None:
        return
    if isinstance(command, str) and not command.strip():
        raise ConfigError(f"{filename}: key '{key}': must not be empty")
    if isinstance(command, list) and not command:
        raise ConfigError(f"{filename}: key '{key}': must not be an empty list")
    # What exec() cannot take would otherwise surface where it runs, not as a config error.
    words = [command] if isinstance(command, str) else command
    if any("\0" in word for word in words):
        raise ConfigError(f"{filename}: key '{key}': must not contain a NUL character")


def _check(data: dict, filename: str) -> RepoConfig:
    config = convert(data, RepoConfig, filename)
    for key in ("command", "setup"):
        check_command(getattr(config, key), key, filename)
    if config.python is not None and (not config.python.strip() or "\0" in config.python):
        raise ConfigError(f"{filename}: key 'python': must name an interpreter")
    if any(not pattern or "\0" in pattern for pattern in config.cache_key):
        raise ConfigError(f"{filename}: key 'cache_key': patterns must be non-empty")
    if not 0 <= config.retry_failed <= MAX_RETRY_FAILED:
        raise ConfigError(f"{filename}: key 'retry_failed': must be a whole number from 0 to {MAX_RETRY_FAILED}")
    if not 0 < config.timeout < math.inf:
        raise ConfigError(f"{filename}: key 'timeout': must be a positive, finite number of seconds")
    for name, value in config.env.items():
        if not name or "=" in name or "\0" in name:
            raise ConfigError(f"{filename}: key 'env': {name!r} is not an environment variable name")
        if "\0" in value:
            raise ConfigError(f"{filename}: key 'env.{name}': must not contain a NUL character")
    return config


def parse_toml(text: bytes, filename: str) -> dict:
    try:
        return tomllib.loads(text.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{filename}: not UTF-8 text ({exc.reason})") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{filename}: invalid TOML: {exc}") from None


def load(read: Callable[[str], bytes | None]) -> RepoConfig:
    """The config from whichever file ``read(name)`` finds (None: the file is absent)."""
    raw = read("tuici.toml")
    if raw is not None:
        return _check(parse_toml(raw, "tuici.toml"), "tuici.toml")
    raw = read("pyproject.toml")
    if raw is not None:
        section = parse_toml(raw, "pyproject.toml").get("tool", {}).get("tuici")
        if section is not None:
            if not isinstance(section, dict):
                raise ConfigError("pyproject.toml: key 'tool.tuici': must be a table")
            return _check(section, "pyproject.toml [tool.tuici]")
    return RepoConfig()


def check_entry(name: str, mode: int, kind: str, size: int, sha: str) -> None:
    """ConfigError unless commit ``sha``'s entry ``name`` is a regular file of a sane size: a symbolic link's
    target is the committer's choice (``/dev/zero``, the token), and a huge file would be read into memory."""
    if mode == 0o120000:
        raise ConfigError(f"{name}: is a symbolic link in commit {sha}; commit the file itself")
    if kind != "blob":
        raise ConfigError(f"{name}: is a {kind} in commit {sha}, not a file")
    if size > MAX_CONFIG_BYTES:
        raise ConfigError(f"{name}: {size} bytes, more than the {MAX_CONFIG_BYTES} a config may have")


def tree_entries(data: bytes, id_bytes: int) -> dict[bytes, tuple[int, str]]:
    """A raw tree object's entries (object ids of ``id_bytes``: 20, or 32 in a SHA-256 repository): name ->
    (mode, object id in hex). Read here rather than by GitPython, which checks every name in Python: 25 ms for a
    tree of 1000 files, on each commit the observer reports. ValueError if the tree is malformed."""
    entries = {}
    pos = 0
    while pos < len(data):
        space = data.index(b" ", pos)
        nul = data.index(b"\0", space)
        entries[data[space + 1:nul]] = (int(data[pos:space], 8), data[nul + 1:nul + 1 + id_bytes].hex())
        pos = nul + 1 + id_bytes
    return entries


def read_committed(repo: git.Repo, sha: str) -> Callable[[str], bytes | None]:
    """A reader for ``load`` that takes each file from the tree of commit ``sha``, never from a work tree.

    Only the committed blob counts: an uncommitted edit changes nothing, and a symbolic link (whose target
    the committer chose) is never followed. The reader raises ConfigError for an entry that is a link, a
    directory or a submodule, or larger than MAX_CONFIG_BYTES, and when git cannot read the commit or
    tree. Objects are read through ``repo``'s long-running ``git cat-file``: no process is started.
    """
    import git  # here, not at the top: the control center imports this module and need not load GitPython

    unreadable = (ValueError, OSError, git.exc.GitError, git.exc.ODBError)
    try:
        tree_sha: bytes | str = repo.git.get_object_header(f"{sha}^{{tree}}")[0]  # the commit's tree
        entries = tree_entries(repo.git.get_object_data(tree_sha)[3], len(tree_sha) // 2)
    except unreadable:
        raise ConfigError(f"git cannot read the tree of commit {sha}") from None

    def read(name: str) -> bytes | None:
        entry = entries.get(name.encode())
        if entry is None:
            return None
        mode, obj = entry
        kind = "tree" if mode == 0o40000 else "commit" if mode == 0o160000 else "blob"
        try:
            size = int(repo.git.get_object_header(obj)[2]) if kind == "blob" else 0
            check_entry(name, mode, kind, size, sha)
            return repo.git.get_object_data(obj)[3]
        except unreadable as exc:
            raise ConfigError(f"{name}: cannot read it from commit {sha}: {exc}") from None

    return read
