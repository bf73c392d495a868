"""meshns: a service-mesh data plane for plain Linux.

The core package holds what every part shares (errors, well-known ports, configuration,
the registry). The parts of the design live in top-level folders of the repository and are
installed as ``meshns.netns``, ``meshns.intercept``, ``meshns.dataplane``, ``meshns.mtls`` and
``meshns.cli``.
"""

__version__ = "0.1.0"

# Before any of our dataclasses is made: their generated methods' code, compiled at install time
# (meshns/fncache.py; ~1 ms per class otherwise, on every process start).
from meshns import fncache as _fncache

_fncache.install()
