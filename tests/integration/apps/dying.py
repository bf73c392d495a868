"""An HTTP/1.1 server that dies in the middle of its response, for the "backend killed
mid-response" test. Standard library only; run unmodified inside a pod as its app.

  GET /ok          -> "ok" (to know it is up)
  GET /cl          -> Content-Length: 1000000, 300000 bytes, then the process is SIGKILLed
  GET /chunked     -> chunked, 300000 bytes in chunks, then SIGKILL (no last chunk)

Run it under a shell loop (`while :; do python3 dying.py; done`) so it comes back for the next case.
"""

from __future__ import annotations

import os
import signal
import socket
import sys

PORT = int(sys.argv[1]) if len(sys.argv) > 1 else 9090
BODY = b"x" * 300_000


def serve(conn: socket.socket) -> None:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            return
        data += chunk
    path = data.split(b" ", 2)[1]
    if path == b"/cl":
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\n" + BODY)
    elif path == b"/chunked":
        conn.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        for i in range(0, len(BODY), 30_000):
            piece = BODY[i:i + 30_000]
            conn.sendall(b"%x\r\n%s\r\n" % (len(piece), piece))
    else:
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        return
    # Dead in the middle: no FIN for a complete message, just a process that is gone.
    os.kill(os.getpid(), signal.SIGKILL)


def main() -> None:
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("0.0.0.0", PORT))
    srv.listen(16)
    while True:
        conn, _ = srv.accept()
        with conn:
            serve(conn)


if __name__ == "__main__":
    main()
