"""Modules imported on first use, for the big ones a process may not need before its first job.

GitPython (~80 ms, and a `git version` run) and psutil (~20 ms) were most of a runner's and the supervisor's
start-up, paid by every runner before it could register.
"""

from __future__ import annotations

import importlib
from types import ModuleType


class LazyModule:
    """Stands for module ``name``, which is imported (by the usual, thread-safe machinery) when one of its
    attributes is first read."""

    def __init__(self, name: str):
        self._name = name
        self._module: ModuleType | None = None

    def __getattr__(self, attr: str):
        if self._module is None:
            self._module = importlib.import_module(self._name)
        return getattr(self._module, attr)
