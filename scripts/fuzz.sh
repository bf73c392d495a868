#!/usr/bin/env bash
# Nightly-style fuzzing of the sidecar's HTTP/1 request parsers (both adapters, differentially),
# its response parsers and protocol detection, with atheris (libFuzzer for Python).
#
#   scripts/fuzz.sh [SECONDS]     each target for SECONDS (default 300)
#
# The corpus lives in scripts/fuzz/corpus/<target>/: seeded from the unit tests' requests and the
# attacker's table (tests/integration/apps/badclient.py), then grown by every run (not in git).
# Crashing inputs are written to scripts/fuzz/crashes/<target>/ (replay one: .venv/bin/python
# scripts/fuzz/fuzz_http1.py TARGET FILE); once fixed, keep them in scripts/fuzz/regressions/
# <target>/, which every run (and the unit tests) replays. Exits non-zero if any target crashed.
set -euo pipefail
cd "$(dirname "$0")/.."

SECONDS_PER_TARGET="${1:-300}"
if ! [[ "$SECONDS_PER_TARGET" =~ ^[0-9]+$ ]] || [ "$SECONDS_PER_TARGET" -lt 1 ]; then
  echo "usage: $0 [SECONDS per target]" >&2
  exit 2
fi
PY=.venv/bin/python
HARNESS=scripts/fuzz/fuzz_http1.py
CORPUS=scripts/fuzz/corpus
CRASHES=scripts/fuzz/crashes
REGRESSIONS=scripts/fuzz/regressions

if ! "$PY" -c "import atheris" 2>/dev/null; then
  echo "== installing atheris into .venv"
  .venv/bin/pip install --quiet atheris
fi

"$PY" "$HARNESS" --seed "$CORPUS"
status=0
summary=()
for target in request response detect; do
  mkdir -p "$CORPUS/$target" "$CRASHES/$target" "$REGRESSIONS/$target"
  log="$CRASHES/$target/last-run.log"
  echo "== fuzzing $target for ${SECONDS_PER_TARGET}s"
  if "$PY" "$HARNESS" "$target" -max_total_time="$SECONDS_PER_TARGET" -max_len=8192 -timeout=10 \
      -rss_limit_mb=2048 -print_final_stats=1 -artifact_prefix="$CRASHES/$target/" \
      "$CORPUS/$target" "$REGRESSIONS/$target" >"$log" 2>&1; then
    result=ok
  else
    result="CRASH (see $log and $CRASHES/$target/)"
    status=1
  fi
  runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  rate=$(sed -n 's/.* exec\/s: \([0-9]*\).*/\1/p' "$log" | tail -1)
  cov=$(sed -n 's/.* cov: \([0-9]*\).*/\1/p' "$log" | tail -1)
  summary+=("$target: ${runs:-?} runs, ${rate:-?} exec/s, cov ${cov:-?}, corpus $(ls "$CORPUS/$target" | wc -l): $result")
  tail -3 "$log"
done
echo "== summary"
printf '%s\n' "${summary[@]}"
exit $status
