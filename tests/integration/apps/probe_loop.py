"""A client that sends one HTTP request after another for a while, each on a new connection,
and records every outcome as a JSON line: {"t": wall-clock time, "ok": bool, "id": the client
identity the backend saw (x-meshns-client-id) or "", "err": why it failed}. Used while sidecars
are killed under load. Standard library only; run unmodified inside a pod.

  probe_loop.py URL SECONDS OUTFILE
"""

from __future__ import annotations

import http.client
import json
import sys
import time
import urllib.parse


def once(url: urllib.parse.SplitResult) -> tuple[bool, str, str]:
    conn = http.client.HTTPConnection(url.hostname or "", url.port or 80, timeout=2)
    try:
        conn.request("GET", url.path)
        resp = conn.getresponse()
        body = resp.read().decode(errors="replace")
        ident = ""
        for line in body.splitlines():
            name, _, value = line.partition(":")
            if name.strip().lower() == "x-meshns-client-id":
                ident = value.strip()
        return resp.status == 200, ident, "" if resp.status == 200 else f"status {resp.status}"
    except (OSError, http.client.HTTPException) as exc:
        return False, "", f"{type(exc).__name__}: {exc}"
    finally:
        conn.close()


def main() -> None:
    url = urllib.parse.urlsplit(sys.argv[1])
    end = time.time() + float(sys.argv[2])
    with open(sys.argv[3], "w") as out:
        while time.time() < end:
            t = time.time()
            ok, ident, err = once(url)
            out.write(json.dumps({"t": t, "ok": ok, "id": ident, "err": err}) + "\n")
            out.flush()
            if not ok:
                time.sleep(0.02)  # a refused connect returns at once: do not spin


if __name__ == "__main__":
    main()
