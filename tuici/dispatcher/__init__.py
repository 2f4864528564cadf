"""The dispatcher: owns the job queue and serves the observer, the runners and control clients.

``scheduler`` holds the rules, ``journal`` makes changes durable and numbers events, ``joblogs`` keeps the
job logs, ``status`` the status reply, and ``server`` the sockets that tie them together.
"""

from .server import AlreadyRunning, Dispatcher, run_dispatcher

__all__ = ["AlreadyRunning", "Dispatcher", "run_dispatcher"]
