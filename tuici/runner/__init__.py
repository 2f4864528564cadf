"""The runner: registers with the dispatcher and tests one commit at a time, each in a sandbox of its own.

``connection`` speaks to the dispatcher; ``job`` runs one job; ``workspace`` keeps the clone; ``environments``
keeps the virtualenvs ``setup`` makes; ``sandbox`` builds what the code under test sees; ``junit`` reads its
counts.
"""

from .connection import Runner, default_workdir, run_runner

__all__ = ["Runner", "default_workdir", "run_runner"]
