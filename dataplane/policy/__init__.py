"""Pure policy decisions of the sidecar: route match, endpoint choice, retries, breakers, outlier
ejection and fault injection.

Nothing here does I/O, reads the clock or uses the global random generator: ``now`` (monotonic
seconds) and random draws in [0, 1) are arguments, so every decision is a row in a table test and the
proxy stays the only place that owns sockets and timers.
"""
