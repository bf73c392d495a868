"""A small closed-loop HTTP load client for tests (stdlib only), run inside a client pod.

Prints one JSON object: counts by status, by X-Backend header, attempts seen, and failures
(exceptions: a request that got no complete response). Each worker keeps one keep-alive
connection, reopened only after an error or a Connection: close.
"""

from __future__ import annotations

import argparse
import http.client
import json
import signal
import threading
import time
from collections import Counter
from urllib.parse import urlsplit


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("url")
    ap.add_argument("-n", "--requests", type=int, default=100)
    ap.add_argument("-c", "--concurrency", type=int, default=1)
    ap.add_argument("-H", "--header", action="append", default=[])
    ap.add_argument("--method", default="GET")
    ap.add_argument("--timeout", type=float, default=30.0)
    ap.add_argument("--pace", type=float, default=0.0, help="seconds between a worker's requests")
    ap.add_argument("--duration", type=float, default=0.0, help="stop after this many seconds (with -n as a cap)")
    args = ap.parse_args()
    url = urlsplit(args.url)
    headers = dict(h.split(":", 1) for h in args.header)
    headers = {k.strip(): v.strip() for k, v in headers.items()}
    lock = threading.Lock()
    status: Counter[str] = Counter()
    backends: Counter[str] = Counter()
    attempts: Counter[str] = Counter()
    flags: Counter[str] = Counter()
    failures: list[str] = []
    left = [args.requests]
    deadline = time.monotonic() + args.duration if args.duration else None
    stop = threading.Event()
    # SIGUSR1 ends the run early (each worker finishes the request it has in flight): a test that
    # must keep load running until some slow step is done sends it then, instead of guessing a
    # duration that a loaded machine can overrun.
    signal.signal(signal.SIGUSR1, lambda signum, frame: stop.set())

    def take() -> bool:
        with lock:
            if stop.is_set() or left[0] <= 0 or (deadline is not None and time.monotonic() >= deadline):
                return False
            left[0] -= 1
            return True

    def worker() -> None:
        conn: http.client.HTTPConnection | None = None
        while take():
            try:
                if conn is None:
                    conn = http.client.HTTPConnection(url.hostname, url.port or 80, timeout=args.timeout)
                conn.request(args.method, url.path + (f"?{url.query}" if url.query else ""), headers=headers)
                resp = conn.getresponse()
                resp.read()
                with lock:
                    status[str(resp.status)] += 1
                    backends[resp.getheader("X-Backend") or "-"] += 1
                    attempts[resp.getheader("x-meshns-attempts") or "-"] += 1
                    flags[resp.getheader("x-meshns-response-flags") or "-"] += 1
                if resp.will_close:
                    conn.close()
                    conn = None
            except (OSError, http.client.HTTPException) as exc:
                with lock:
                    failures.append(f"{type(exc).__name__}: {exc}")
                if conn is not None:
                    conn.close()
                conn = None
            if args.pace:
                time.sleep(args.pace)

    started = time.monotonic()
    threads = [threading.Thread(target=worker) for _ in range(args.concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print(json.dumps({"status": status, "backends": backends, "attempts": attempts, "flags": flags,
                      "failures": failures, "seconds": round(time.monotonic() - started, 3)}))


if __name__ == "__main__":
    main()
