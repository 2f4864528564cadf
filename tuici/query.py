"""Requests to a dispatcher over a blocking socket, for the one-shot commands (status, log, rerun, cancel).

They need no event loop, and without asyncio's import a command answers ~30 ms sooner. ``client.Control``
is the asyncio counterpart, for ``serve`` and the control center.
"""

from __future__ import annotations

import os
from typing import BinaryIO

from . import protocol as p
from .statedir import StateDir, resolve_token


class NoDispatcher(Exception):
    pass


def endpoint_for(state: StateDir, token: str | None = None) -> p.Endpoint:
    """This repository's dispatcher (or $TUICI_DISPATCHER), joined with its token, and over TCP with the CA in
    $TUICI_TLS_CA."""
    text = os.environ.get("TUICI_DISPATCHER") or state.address()
    if not text:
        raise NoDispatcher(f"no dispatcher has run for this repository ({state.path} has no address)")
    try:
        address = p.parse_address(text)
    except ValueError as exc:
        raise NoDispatcher(str(exc)) from None
    tls = None
    if isinstance(address, p.TcpAddress):
        # A dispatcher serving TLS (for runners on other hosts) is trusted through the CA in TUICI_TLS_CA.
        try:
            tls = p.client_tls(os.environ.get("TUICI_TLS_CA"))
        except OSError as exc:  # ssl.SSLError included
            raise NoDispatcher(f"cannot load the CA file in TUICI_TLS_CA: {exc}") from None
    return p.Endpoint(address, resolve_token(token, state), tls)


class Query:
    """One control connection; ``request`` sends a message and returns the dispatcher's reply."""

    def __init__(self, endpoint: p.Endpoint, timeout: float = 5.0):
        address = endpoint.address
        try:
            sock = p.connect(address, timeout)
            if endpoint.tls is not None and isinstance(address, p.TcpAddress):
                sock = endpoint.tls.wrap_socket(sock, server_hostname=address.host)
        except OSError as exc:
            raise NoDispatcher(f"no dispatcher answers at {endpoint} ({exc})") from None
        self._sock = sock
        self._stream = sock.makefile("rb")
        try:
            welcome = self.request(p.Hello(role="control", token=endpoint.token))
        except OSError as exc:  # a timeout included
            self.close()
            raise NoDispatcher(f"no dispatcher answers at {endpoint} ({exc})") from None
        except BaseException:
            self.close()
            raise
        if not isinstance(welcome, p.Welcome):
            self.close()
            raise p.ProtocolError(f"expected welcome, got {type(welcome).__name__}")
        sock.settimeout(None)  # as long as the dispatcher takes, like Control's requests

    def request(self, msg: p.Message) -> p.Message:
        self._sock.sendall(p.encode(msg))
        return self._receive()

    def _receive(self) -> p.Message:
        reply = p.read_message_blocking(self._stream)
        if reply is None:
            raise ConnectionError("dispatcher closed the connection")
        if isinstance(reply, p.Refused):
            raise p.RefusedError(reply.reason)
        return reply

    def status(self, limit: int = 0) -> p.StatusReply:
        reply = self.request(p.StatusRequest(limit=limit))
        assert isinstance(reply, p.StatusReply)
        return reply

    def status_json(self, out: BinaryIO) -> None:
        """Write the status to ``out`` as the dispatcher encoded it (see ``StatusJson``)."""
        reply = self.request(p.StatusRequest(as_json=True))
        while True:
            if not isinstance(reply, p.StatusJson):
                raise p.ProtocolError(f"expected status_json, got {type(reply).__name__}")
            out.write(reply.data)
            if not reply.more:
                return
            reply = self._receive()

    def close(self) -> None:
        self._stream.close()
        self._sock.close()

    def __enter__(self) -> "Query":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
