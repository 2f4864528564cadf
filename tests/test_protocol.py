"""The wire format, and a live dispatcher facing malformed frames and wrong tokens."""

from __future__ import annotations

import asyncio
import socket
import struct
import subprocess
import sys

import msgspec
import pytest

from tuici import wire as p
from tuici.wire import aio

from conftest import wait_for


def test_messages_round_trip_through_a_frame():
    msg = p.CommitsSeen(branch="main", tip="a" * 40,
                        commits=[p.ReportedCommit(sha="a" * 40, branch="main", author="Dev", subject="x", time=1.0)])
    frame = p.encode(msg)
    (length,) = struct.unpack(">I", frame[:4])
    assert length == len(frame) - 4
    assert p.decode(frame[4:]) == msg


@pytest.mark.parametrize("body, problem", [
    (b"\xc1", "invalid message"),
    (msgspec.msgpack.encode({"type": "nonsense"}), "invalid message"),
    (msgspec.msgpack.encode({"type": "cancel", "job_id": "seven"}), "Expected `int`"),
    (msgspec.msgpack.encode({"type": "cancel", "job_id": 1, "extra": 2}), "unknown field"),
    (msgspec.msgpack.encode([1, 2, 3]), "invalid message"),
])
def test_invalid_bodies_raise_protocol_error(body, problem):
    with pytest.raises(p.ProtocolError, match=problem):
        p.decode(body)


def test_kinds_outside_their_literal_are_refused():
    notice = p.Notice(kind="process.started", name="x")
    assert p.decode(p.encode(notice)[4:]) == notice
    with pytest.raises(p.ProtocolError, match=r"\$\.kind"):
        p.decode(p.encode(p.Notice(kind="job.finished", name="x"))[4:])  # type: ignore[arg-type]
    with pytest.raises(p.ProtocolError, match=r"\$\.kind"):
        p.decode(p.encode(p.Event(seq=1, ts=1.0, kind="job.exploded"))[4:])  # type: ignore[arg-type]


def test_a_permanent_refusal_keeps_the_shape_version_1_peers_decode():
    """A v1 peer refused for its version or token must read why: the flag is only sent when false."""
    assert msgspec.msgpack.decode(p.encode(p.Refused(reason="protocol version 1 is not 2"))[4:]) == {
        "type": "refused", "reason": "protocol version 1 is not 2"}
    assert p.decode(p.encode(p.Refused(reason="taken", permanent=False))[4:]).permanent is False


def test_the_wire_package_loads_without_asyncio():
    """The one-shot commands import it; asyncio would cost them ~30 ms."""
    code = "import sys, tuici.wire, tuici.cli; print('asyncio' in sys.modules, 'ssl' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True).stdout.split() == ["False", "False"]


def test_reconnect_backs_off_with_jitter_and_starts_over_after_a_connection(monkeypatch):
    drawn: list[tuple[float, float]] = []
    monkeypatch.setattr(aio.random, "uniform", lambda low, high: drawn.append((low, high)) or 0.0)
    outcomes = iter([False, False, False, False, True, False])
    stopping = asyncio.Event()

    async def attempt() -> bool:
        connected = next(outcomes, None)
        if connected is None:
            stopping.set()
            return False
        return connected

    asyncio.run(aio.reconnect(attempt, stopping, first=0.1, cap=0.5))
    assert drawn == [(0.05, 0.1), (0.1, 0.2), (0.2, 0.4), (0.25, 0.5),  # four failures
                     (0, 0.1),  # a connection that ended
                     (0.05, 0.1), (0.1, 0.2)]


def test_oversized_frames_are_refused_before_reading_them():
    async def go():
        reader = asyncio.StreamReader()
        reader.feed_data(struct.pack(">I", p.MAX_FRAME + 1))
        with pytest.raises(p.ProtocolError, match="exceeds"):
            await p.read_message(reader)
    asyncio.run(go())


def test_truncated_frame_is_an_error_but_clean_eof_is_not():
    async def go():
        reader = asyncio.StreamReader()
        reader.feed_data(p.encode(p.Heartbeat())[:-1])
        reader.feed_eof()
        with pytest.raises(p.ProtocolError):
            await p.read_message(reader)
        empty = asyncio.StreamReader()
        empty.feed_eof()
        assert await p.read_message(empty) is None
    asyncio.run(go())


def test_addresses_read_back_as_written():
    for text, address in (("127.0.0.1:80", p.TcpAddress("127.0.0.1", 80)), ("[::1]:9", p.TcpAddress("::1", 9)),
                          ("unix:/run/x y/d.sock", p.UnixAddress("/run/x y/d.sock"))):
        assert p.parse_address(text) == address and str(address) == text
    for bad in ("nonsense", "unix:relative/d.sock", "host:port"):
        with pytest.raises(ValueError, match="unix:/ABSOLUTE/PATH"):
            p.parse_address(bad)


def test_a_tour_of_the_addresses_follows_a_standbys_pointer_and_tries_each_once():
    """No sockets: the order in which the clients (``aio.handshake``, ``blocking.Query``) try a group's addresses."""
    from tuici.wire.addresses import Tour

    a, b, c, d = (p.TcpAddress("10.0.0.1", port) for port in (1, 2, 3, 4))
    endpoint = p.Endpoint((a, b, c), "token")
    endpoint.prefer(b)
    tour = Tour(endpoint)
    assert tour.next() == b  # the one that answered last, first
    tour.follow("10.0.0.1:3")  # b stands by and names c
    assert tour.next() == c
    tour.follow("10.0.0.1:2")  # c names b, tried already: not again
    tour.follow("not an address")  # a pointer that names nothing is no step
    assert tour.next() == a
    tour.follow("10.0.0.1:4")  # one the endpoint did not know
    assert [tour.next(), tour.next()] == [d, None]
    assert Tour(p.Endpoint((a,), "token")).next() == a


def _raw(address: str) -> socket.socket:
    tcp = p.parse_address(address)
    return socket.create_connection((tcp.host, tcp.port), timeout=5)


def _closed_by_peer(sock: socket.socket) -> bool:
    sock.settimeout(5)
    try:
        return sock.recv(1 << 16) == b"" or _closed_by_peer(sock)
    except ConnectionResetError:
        return True


def test_malformed_frames_and_wrong_tokens_are_refused_while_others_keep_working(repo, cluster):
    cluster.start_observer()
    cluster.start_runner("r1")
    cluster.wait_job(repo.head())
    token = cluster.state.token()

    garbage = _raw(cluster.address)
    garbage.sendall(b"\xff\xff\xff\xff and then some")
    assert _closed_by_peer(garbage)

    wrong = _raw(cluster.address)
    wrong.sendall(p.encode(p.Hello(role="control", token="not-the-token")))
    reply = wrong.recv(1 << 16)
    assert p.decode(reply[4:]) == p.Refused(reason="wrong token")
    assert _closed_by_peer(wrong)

    typed_wrong = _raw(cluster.address)
    body = msgspec.msgpack.encode({"type": "hello", "role": "control", "token": 12345})
    typed_wrong.sendall(struct.pack(">I", len(body)) + body)
    assert _closed_by_peer(typed_wrong)

    # A control client that sends a runner's message after its hello is cut off too.
    sneaky = _raw(cluster.address)
    sneaky.sendall(p.encode(p.Hello(role="control", token=token)))
    sneaky.recv(1 << 16)
    sneaky.sendall(p.encode(p.JobResult(job_id=1, attempt=1, exit_code=0, duration_s=0, log_size=0)))
    assert _closed_by_peer(sneaky)

    # A second runner under a taken name is refused; the first keeps working.
    dup = _raw(cluster.address)
    dup.sendall(p.encode(p.Hello(role="runner", token=token, name="r1", pid=1)))
    assert "already registered" in p.decode(dup.recv(1 << 16)[4:]).reason

    sha = repo.commit("after the abuse")
    assert cluster.wait_job(sha).state == "passed"
    log = cluster.component_log("dispatcher")
    assert "exceeds" in log and "wrong token" in log and "may not send JobResult" in log
    assert "Expected `str`, got `int` - at `$.token`" in log
    for s in (garbage, wrong, typed_wrong, sneaky, dup):
        s.close()


def test_a_taken_name_is_refused_for_now_whatever_the_name_says(repo, cluster):
    """The dispatcher, not the runner's reading of the reason, says a refusal is for good: a runner named
    "version-1" whose name is still held retries, and a wrong token stops it."""
    cluster.start_runner("version-1")
    wait_for(lambda: any(r.name == "version-1" for r in cluster.status().runners), message="the runner")
    endpoint = p.Endpoint(p.parse_addresses(cluster.address), cluster.state.token())

    async def refusal(hello: p.Hello) -> p.RefusedError:
        with pytest.raises(p.RefusedError) as refused:
            await p.handshake(endpoint, hello)
        return refused.value

    taken = asyncio.run(refusal(p.Hello(role="runner", token=endpoint.token, name="version-1", pid=1)))
    assert "already registered" in str(taken) and not taken.permanent
    wrong = asyncio.run(refusal(p.Hello(role="runner", token="not-the-token", name="other", pid=1)))
    assert str(wrong) == "wrong token" and wrong.permanent
