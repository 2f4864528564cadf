"""The far end of the raw-socket limits: ``python -m bench._peer echo|sink SOCKET [FILE]``.

Listens on the Unix socket SOCKET (as tuici's local components talk to the dispatcher; ``ready`` on stdout
once it does), serves one connection and exits: ``echo`` sends back whatever it receives; ``sink`` writes
everything it receives to FILE and answers ``done`` once the sender has shut down its side and all of it is
written.
"""

from __future__ import annotations

import socket
import sys


def main() -> None:
    mode, path = sys.argv[1], sys.argv[2]
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(path)
    srv.listen(1)
    srv.settimeout(60)
    print("ready", flush=True)
    conn, _ = srv.accept()
    conn.settimeout(120)
    if mode == "echo":
        while data := conn.recv(65536):
            conn.sendall(data)
    elif mode == "sink":
        buf = bytearray(1 << 16)
        view = memoryview(buf)
        with open(sys.argv[3], "wb", buffering=0) as fh:
            while n := conn.recv_into(buf):
                fh.write(view[:n])
        conn.sendall(b"done")
    conn.close()


if __name__ == "__main__":
    main()
