"""Where a repository's tuici state lives: database, logs, token, the dispatcher's socket and its addresses.

By default that is ``<repo>/.git/tuici/`` so that it never dirties the work tree.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

from .errors import NotARepository, NoToken


def find_git_dir(repo: str | os.PathLike) -> tuple[Path, Path]:
    """(work tree or bare dir, git dir) of the repository at ``repo``."""
    path = Path(repo).resolve()
    if not path.exists():
        raise NotARepository(f"{path}: no such directory")
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--path-format=absolute", "--git-common-dir", "--is-bare-repository",
             "--show-toplevel"],
            cwd=path, capture_output=True, text=True, check=True,
        ).stdout.splitlines()
    except subprocess.CalledProcessError as exc:
        raise NotARepository(f"{path}: not a git repository ({exc.stderr.strip()})") from None
    git_dir = Path(out[0])
    top = Path(out[2]) if len(out) > 2 and out[1] == "false" else git_dir
    return top, git_dir


@dataclass(frozen=True)
class StateDir:
    path: Path

    @classmethod
    def for_repo(cls, repo: str | os.PathLike) -> "StateDir":
        return cls.in_git_dir(find_git_dir(repo)[1])

    @classmethod
    def in_git_dir(cls, git_dir: Path) -> "StateDir":
        return cls(git_dir / "tuici")

    def ensure(self) -> "StateDir":
        (self.path / "logs" / "jobs").mkdir(parents=True, exist_ok=True)
        return self

    @property
    def db(self) -> Path:
        return self.path / "tuici.db"

    @property
    def logs(self) -> Path:
        return self.path / "logs"

    def component_log(self, name: str) -> Path:
        return self.logs / f"{name}.log"

    def job_log(self, job_id: int) -> Path:
        return self.logs / "jobs" / f"{int(job_id)}.log"

    @property
    def local_config(self) -> Path:
        """The user's settings for this repository (see ``localconfig``): never committed, out of jobs' sight."""
        return self.path / "config.toml"

    @property
    def token_file(self) -> Path:
        return self.path / "token"

    @property
    def address_file(self) -> Path:
        return self.path / "address"

    @property
    def socket(self) -> Path:
        """The dispatcher's Unix socket, which local components use (see ``wire.UnixAddress``)."""
        return self.path / "dispatcher.sock"

    @property
    def lock_file(self) -> Path:
        return self.path / "dispatcher.lock"

    def token(self, create: bool = False) -> str:
        """The shared secret; created with mode 0600 on the dispatcher's first start."""
        try:
            return self.token_file.read_text().strip()
        except FileNotFoundError:
            if not create:
                raise
        import secrets  # only the first start needs it; every other command is ~5 ms quicker without

        self.ensure()
        token = secrets.token_urlsafe(32)
        fd = os.open(self.token_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(token + "\n")
        return token

    def addresses(self) -> list[str]:
        """Every address the dispatcher serves on, one a line: the one for local components first (its Unix
        socket), then any TCP address it was told to listen on for other machines."""
        try:
            return [line for line in self.address_file.read_text().splitlines() if line]
        except FileNotFoundError:
            return []

    def address(self) -> str | None:
        """The address local components use, once the dispatcher serves."""
        return next(iter(self.addresses()), None)

    def write_addresses(self, addresses: list[str]) -> None:
        tmp = self.address_file.with_suffix(".tmp")
        tmp.write_text("".join(f"{address}\n" for address in addresses))
        tmp.replace(self.address_file)


def cache_root() -> Path:
    """tuici's cache: runners' work dirs and job environments (``$TUICI_CACHE_DIR``, else the user's cache dir).

    Never inside a repository: tools that look upward for their configuration (pytest, setuptools, mypy) would
    find the watched work tree's files from a job's checkout.
    """
    base = os.environ.get("TUICI_CACHE_DIR")
    if not base:
        base = os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "tuici")
    return Path(base).resolve()


def repo_cache(git_dir: Path) -> Path:
    """The part of the cache kept for one repository (its runners' work dirs)."""
    name = git_dir.parent.name if git_dir.name == ".git" else git_dir.name
    digest = hashlib.sha256(os.fsencode(git_dir.resolve())).hexdigest()[:12]
    return cache_root() / "repos" / f"{name}-{digest}"


def resolve_token(explicit: str | None, state: StateDir | None) -> str:
    """--token, then TUICI_TOKEN, then the state dir's token file."""
    if explicit:
        return explicit
    if os.environ.get("TUICI_TOKEN"):
        return os.environ["TUICI_TOKEN"]
    if state is not None:
        try:
            return state.token()
        except FileNotFoundError:
            pass
    raise NoToken("no token: pass --token, set TUICI_TOKEN, or run on the dispatcher's machine")
