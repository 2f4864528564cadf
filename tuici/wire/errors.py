"""What can go wrong between a component and a dispatcher."""

from __future__ import annotations

from ..errors import TuiciError


class ProtocolError(TuiciError):
    """A peer sent something that is not a valid frame, or not the message expected there."""


class RefusedError(TuiciError):
    """The dispatcher answered with ``Refused``; ``permanent`` is its word on whether asking again can help."""

    def __init__(self, reason: str, permanent: bool, active: str = ""):
        super().__init__(reason)
        self.permanent = permanent
        self.active = active  # a standby's pointer to the active dispatcher


class NoDispatcher(TuiciError):
    """No dispatcher could be found or reached for a repository."""
