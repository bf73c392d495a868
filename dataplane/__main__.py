"""Entry point: ``python -m meshns.dataplane --config FILE`` (run by the supervisor as uid 1337).

With ``--config - --enter-netns NETNS`` (a pod being created: netns/supervisor.py starts the
sidecar early) the process starts as root in the host namespace: it imports its code first (the
bulk of its start-up), then waits for its config on stdin, which the supervisor writes only once
``meshns create`` has applied and checked the pod's rules, then enters the pod's namespace and
becomes the proxy user (netns/proxyuser.py) before it binds or parses anything else.
"""

import io
import sys

from meshns.trace import mark

mark("sc:interp")
from meshns.dataplane.server import main  # noqa: E402 - after the mark: its imports are timed

mark("sc:imported")


def _become_proxy_after_config(argv: list[str]) -> list[str]:
    if "--enter-netns" not in argv:
        return argv
    at = argv.index("--enter-netns")
    netns, rest = argv[at + 1], argv[:at] + argv[at + 2:]
    import uvloop  # noqa: F401, PLC0415 - main() imports it too: load it before the wait, not after

    config = sys.stdin.read()  # blocks until the supervisor hands it over (the gate)
    mark("sc:config")
    if not config:
        sys.exit(0)  # the supervisor gave up (create went away): nothing was started
    from meshns.errors import MeshnsError  # noqa: PLC0415
    from meshns.netns.proxyuser import become_proxy  # noqa: PLC0415

    try:
        become_proxy(netns)
    except (OSError, MeshnsError) as exc:
        print(f"meshns sidecar: cannot enter pod namespace {netns} as the proxy user: {exc}", file=sys.stderr)
        sys.exit(3)
    mark("sc:proxy")
    sys.stdin = io.StringIO(config)  # load_config("-") reads it from here
    return rest


if __name__ == "__main__":
    sys.exit(main(_become_proxy_after_config(sys.argv[1:])))
