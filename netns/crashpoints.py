"""A test hook: ``MESHNS_CRASH_AT=<step>`` makes meshns kill itself right after that step.

Used by tests/integration/test_crash_points.py to prove that ``meshns gc`` leaves the host clean
and the registry consistent whichever step a ``create``, ``delete``, ``apply -f`` or ``delete -f``
was killed after, deterministically instead of racing a kill against a running command.

The kill is SIGKILL sent to ourselves, not an exception: nothing runs after it (no rollback, no
``finally``, no atexit, no buffered output flushed), exactly like ``kill -9`` or the OOM killer.
With the variable unset (always, outside tests) ``crash_point`` only compares two strings.

Every name below is called exactly once in the code, right after the step it names (a unit test
checks both ways), and the integration test is parametrized over these tuples, so a new step
gets a crash test by being added here.
"""

from __future__ import annotations

import os
import signal

from meshns.trace import mark

ENV = "MESHNS_CRASH_AT"

# create, in order (netns/lifecycle.py). From CREATE_COMMITTED on, the row is ready: the pod
# is kept and gc only republishes; before it, gc removes everything the create made.
CREATE_STEPS = (
    "create:row-reserved",  # registry row (state creating, owner pid) and address
    "create:pod-files-marked",  # owner mark in <state>/netns, /etc/netns/<ns>/{hosts,resolv.conf}
    "create:pod-config-written",  # <state>/pods/<pod>/{sidecar,supervisor}.json (and the mesh CA)
    "create:supervisor-started",  # supervisor launched, gated: sidecar process without config
    "create:bridge-ready",  # the mesh's bridge exists, with the gateway address
    "create:guard-installed",  # host FORWARD guard rules for the bridge
    "create:services-reserved",  # service rows (VIPs) of the pod's --service declarations
    "create:netns-added",  # the network namespace
    "create:veth-added",  # veth pair, peer born inside the namespace as eth0, host end on the bridge
    "create:pod-addressed",  # eth0 address, MAC, default route, lo up, IPv6 off
    "create:rules-applied",  # interception rules in the pod (the init step), read back and checked
    "create:first-published",  # hosts entries and snapshots that include the new pod
    "create:supervisor-running",  # sidecar up, validation probes passed, app started
    "create:app-serving",  # the app accepts on its service target ports
    "create:marked-ready",  # row state ready: the point of no return
    "create:published",  # the pod published as an endpoint of its services
)
CREATE_COMMITTED = "create:marked-ready"

# delete, in order (netns/lifecycle.py: delete, then teardown, which gc also runs).
DELETE_STEPS = (
    "delete:marked-deleting",  # row state deleting, owner pid
    "delete:unpublished",  # a ready pod with services taken out of them, grace period over
    "delete:supervisor-stopped",  # app stopped, sidecar drained and stopped
    "delete:pod-processes-stopped",  # anything else still running in the namespace
    "delete:veth-removed",
    "delete:netns-removed",  # the namespace, and with it the pod's rules
    "delete:pod-files-removed",  # /etc/netns/<ns> and the owner mark
    "delete:pod-dir-removed",  # <state>/pods/<pod>
    "delete:row-removed",  # the registry row
    "delete:bridge-removed",  # bridge and guard rules, only when the last pod went
    "delete:republished",  # other pods' hosts files and snapshots without the pod
)
# Steps reached only when the pod deleted was the mesh's last one.
LAST_POD_ONLY = ("delete:bridge-removed",)

# apply -f and delete -f (cli/config_cmds.py): the registry is written, the pods not yet told.
CONFIG_STEPS = (
    "apply:stored",
    "delete-f:removed",
)

ALL_STEPS = CREATE_STEPS + DELETE_STEPS + CONFIG_STEPS


def crash_point(step: str) -> None:
    """SIGKILL this process if MESHNS_CRASH_AT names ``step`` (a test hook; see above)."""
    mark(step)  # the steps are the timeline of a create (meshns.trace; off unless MESHNS_TRACE)
    if os.environ.get(ENV) == step:
        os.kill(os.getpid(), signal.SIGKILL)
