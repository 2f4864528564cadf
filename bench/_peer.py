"""The far end of the raw-socket limits: ``python -m bench._peer echo|sink [FILE]``.

Listens on 127.0.0.1 (a free port, printed on stdout), serves one connection and exits:
``echo`` sends back whatever it receives; ``sink`` writes everything it receives to FILE
and answers ``done`` once the sender has shut down its side and all of it is written.
"""

from __future__ import annotations

import socket
import sys


def main() -> None:
    mode = sys.argv[1]
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    srv.settimeout(60)
    print(srv.getsockname()[1], flush=True)
    conn, _ = srv.accept()
    conn.settimeout(120)
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if mode == "echo":
        while data := conn.recv(65536):
            conn.sendall(data)
    elif mode == "sink":
        buf = bytearray(1 << 16)
        view = memoryview(buf)
        with open(sys.argv[2], "wb", buffering=0) as fh:
            while n := conn.recv_into(buf):
                fh.write(view[:n])
        conn.sendall(b"done")
    conn.close()


if __name__ == "__main__":
    main()
