"""The dispatcher: owns the job queue and serves the observer, the runners and control clients."""

from .server import AlreadyRunning, Dispatcher, run_dispatcher

__all__ = ["AlreadyRunning", "Dispatcher", "run_dispatcher"]
