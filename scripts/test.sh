#!/usr/bin/env bash
# The whole test suite, from a fresh Debian 12 / Ubuntu machine: provision, lint, type-check,
# validate the Vagrantfile, then every test (unit, component, and integration in real
# namespaces, which need root). .ci/run runs exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/provision.sh --test

echo "== ruff"
.venv/bin/ruff check .
echo "== mypy --strict"
.venv/bin/mypy
echo "== vagrant validate"
(cd vagrant && vagrant validate --ignore-provider)
echo "== pytest"
exec .venv/bin/pytest -p no:cacheprovider "$@"
