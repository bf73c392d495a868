"""Entry point: ``python -m meshns.dataplane --config FILE`` (run by the supervisor as uid 1337)."""

import sys

from meshns.dataplane.server import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
