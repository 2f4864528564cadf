"""Every error tuici raises on purpose; only the CLI (``cli.main``) turns them into messages and exit codes.

The wire's own (``ProtocolError``, ``RefusedError``, ``NoDispatcher``) are in ``wire.errors``, subclasses of
``TuiciError`` too.
"""

from __future__ import annotations


class TuiciError(Exception):
    """Base of the errors below: a message meant for the user."""


class CommandError(TuiciError):
    """A command cannot do what it was asked: a bad argument, nothing to act on, a dispatcher already serving."""


class NotARepository(TuiciError):
    """The path a command was given is not a git repository."""


class NoToken(TuiciError):
    """No token to join a dispatcher with: none given, and no state dir that holds one."""


class ConfigError(TuiciError):
    """A repository's tuici config is invalid; the message names the file and the key."""


class JobError(TuiciError):
    """tuici could not run a job (bad config, missing commit, failed setup): the job ends in error."""


class AlreadyRunning(TuiciError):
    """A dispatcher serves this state dir already (it holds the lock)."""


class SupervisorError(TuiciError):
    """A supervisor could not start the dispatcher (or one already serves the repository)."""


class ComponentError(TuiciError):
    """An observer or runner cannot go on: refused for good, its work dir taken, no sandbox where one is
    required, or the supervisor that started it gone."""


class LeaseLost(TuiciError):
    """Another dispatcher of a group sharing one store holds the lease now: this one must stop acting."""
