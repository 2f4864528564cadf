"""Every error tuici raises on purpose; only the CLI turns them into messages and exit codes."""

from __future__ import annotations


class TuiciError(Exception):
    """Base of the errors below: a message meant for the user."""


class JobError(TuiciError):
    """tuici could not run a job (bad config, missing commit, failed setup): the job ends in error."""
