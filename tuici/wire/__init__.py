"""The wire between tuici's processes: typed messages, their framing, addresses, and the clients.

``from tuici import wire as p`` gives every public name. Those of ``aio`` load on first use: asyncio's import
would cost the one-shot commands (status, log, rerun, cancel) ~30 ms they otherwise do not spend.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .addresses import (
    BACKLOG,
    SUN_PATH_MAX,
    Address,
    Endpoint,
    TcpAddress,
    UnixAddress,
    address_of,
    client_tls,
    connect,
    endpoint_for,
    listeners,
    notice_dead_peers,
    parse_address,
    parse_addresses,
    remove_socket_file,
    server_tls,
    socket_path,
)
from .blocking import Query, read_message_blocking
from .errors import NoDispatcher, ProtocolError, RefusedError
from .framing import MAX_FRAME, MAX_HELLO, OUTPUT_CHUNK, decode, encode, expect
from .messages import (
    FINAL_STATES,
    MAX_LISTED_TESTS,
    MAX_TEST_DETAILS,
    MAX_TEST_MESSAGE,
    MAX_TEST_NAME,
    PROTOCOL_VERSION,
    Assign,
    AttemptInfo,
    AttemptOutcome,
    BisectionInfo,
    BisectionState,
    Branch,
    BranchGone,
    Bye,
    CancelJob,
    CancelRequest,
    Change,
    CommitInfo,
    CommitsSeen,
    DispatcherInfo,
    DispatcherRole,
    Event,
    EventKind,
    FlakyReply,
    FlakyRequest,
    FlakyTest,
    GcReply,
    GcRequest,
    Heartbeat,
    HeldJob,
    Hello,
    History,
    HistoryEntry,
    HistoryReply,
    HistoryRequest,
    JobInfo,
    JobKind,
    JobOutput,
    JobResult,
    JobState,
    LogRequest,
    Message,
    Notice,
    NoticeKind,
    Offset,
    Order,
    Output,
    Priority,
    Refused,
    Reply,
    ReportedCommit,
    RerunRequest,
    ResultAck,
    Role,
    RunnerInfo,
    RunnerState,
    Sha,
    StatusJson,
    StatusReply,
    StatusRequest,
    Subscribe,
    TestCase,
    TestCases,
    TestOutcome,
    TestReport,
    TestsReply,
    TestsRequest,
    Timestamp,
    TipsAck,
    TryRequest,
    Welcome,
    dispatch_order,
    to_json,
    to_json_bytes,
)

if TYPE_CHECKING:
    from .aio import READ_LIMIT, Connection, Control, handshake, join, read_message, reconnect

_AIO = frozenset({"READ_LIMIT", "Connection", "Control", "handshake", "join", "read_message", "reconnect"})

__all__ = ["Address", "Assign", "AttemptInfo", "AttemptOutcome", "BACKLOG", "BisectionInfo", "BisectionState",
    "Branch", "BranchGone", "Bye", "CancelJob", "CancelRequest", "Change", "CommitInfo", "CommitsSeen", "Connection",
    "Control", "DispatcherInfo", "DispatcherRole", "Endpoint", "Event", "EventKind", "FINAL_STATES", "FlakyReply",
    "FlakyRequest", "FlakyTest", "GcReply", "GcRequest", "Heartbeat", "HeldJob", "Hello", "History", "HistoryEntry",
    "HistoryReply", "HistoryRequest", "JobInfo", "JobKind", "JobOutput", "JobResult", "JobState", "LogRequest",
    "MAX_FRAME", "MAX_HELLO", "MAX_LISTED_TESTS", "MAX_TEST_DETAILS", "MAX_TEST_MESSAGE", "MAX_TEST_NAME", "Message",
    "NoDispatcher", "Notice", "NoticeKind", "OUTPUT_CHUNK", "Offset", "Order", "Output", "PROTOCOL_VERSION",
    "Priority", "ProtocolError", "Query", "READ_LIMIT", "Refused", "RefusedError", "Reply", "ReportedCommit",
    "RerunRequest", "ResultAck", "Role", "RunnerInfo", "RunnerState", "SUN_PATH_MAX", "Sha", "StatusJson",
    "StatusReply", "StatusRequest", "Subscribe", "TcpAddress", "TestCase", "TestCases", "TestOutcome",
    "TestReport", "TestsReply", "TestsRequest", "Timestamp", "TipsAck", "TryRequest", "UnixAddress", "Welcome",
    "address_of", "client_tls", "connect", "decode", "dispatch_order", "encode", "endpoint_for", "expect",
    "handshake", "join", "listeners", "notice_dead_peers", "parse_address", "parse_addresses", "read_message",
    "read_message_blocking", "reconnect", "remove_socket_file", "server_tls", "socket_path", "to_json", "to_json_bytes"]


def __getattr__(name: str) -> Any:
    if name in _AIO:
        return getattr(importlib.import_module(".aio", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
