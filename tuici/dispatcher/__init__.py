"""The dispatcher: owns the job queue and serves the observer, the runners and control clients.

``scheduler`` holds the rules, ``journal`` makes changes durable and numbers events, ``joblogs`` keeps the
job logs, ``status`` the status reply, and ``server`` the sockets that tie them together.
"""

from .server import Dispatcher, run_dispatcher

__all__ = ["Dispatcher", "run_dispatcher"]
