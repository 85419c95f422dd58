#!/usr/bin/env bash
# Builds the libFuzzer targets with clang and runs each for a bounded time.
#   tests/fuzz/run.sh              every target, 20 s each
#   tests/fuzz/run.sh 600          every target, 10 minutes each
#   FUZZ_TARGETS="fuzz_http fuzz_jwt" tests/fuzz/run.sh 60    some of them
#   FUZZ_KEEP_GOING=1 tests/fuzz/run.sh 3600
#       keep fuzzing after a crash (libFuzzer -fork=1 -ignore_crashes=1), to
#       collect every distinct crash of a long run instead of the first
# Build dir: $FANOUT_FUZZ_BUILD_DIR (default build-fuzz). New corpus entries
# go to <build>/tests/fuzz/work/<target>/ (the committed seeds under
# tests/fuzz/corpus/ are only read); crashes are written next to them as
# <build>/tests/fuzz/work/<target>-crash-* and reproduce with
#   <build>/tests/fuzz/<target> <that file>
# Exit status 1 if any target crashed or failed an invariant.
set -uo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
SECS=${1:-20}
BUILD=${FANOUT_FUZZ_BUILD_DIR:-$ROOT/build-fuzz}

if ! command -v clang >/dev/null; then
  echo "fuzz: clang not found (deploy/install-deps.sh installs it)" >&2
  exit 1
fi
CC=clang cmake -S "$ROOT" -B "$BUILD" -G Ninja -DFO_FUZZ=ON -DCMAKE_BUILD_TYPE=Debug >/dev/null ||
  exit 1
cmake --build "$BUILD" -j "$(nproc)" --target fuzz_all || exit 1

FZ=$BUILD/tests/fuzz
targets=${FUZZ_TARGETS:-$(cat "$FZ/targets.txt" | tr ';' ' ')}
failed=()
for t in $targets; do
  work=$FZ/work/$t
  mkdir -p "$work"
  args=(-max_total_time="$SECS" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1
        -artifact_prefix="$FZ/work/$t-")
  [ -f "$ROOT/tests/fuzz/$t.dict" ] && args+=(-dict="$ROOT/tests/fuzz/$t.dict")
  [ "${FUZZ_KEEP_GOING:-0}" = "1" ] && args+=(-fork=1 -ignore_crashes=1 -ignore_timeouts=1
                                              -ignore_ooms=1)
  echo "=== $t: ${SECS}s"
  log=$FZ/work/$t.log
  marker=$FZ/work/$t.start
  touch "$marker"
  ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1} UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1} \
    "$FZ/$t" "${args[@]}" "$work" "$ROOT/tests/fuzz/corpus/$t" >"$log" 2>&1
  rc=$?
  grep -E "^(stat::number_of_executed_units|stat::new_units_added)|^#[0-9]+ +DONE" "$log" |
    tr '\n' ' '
  echo
  crashes=$(find "$FZ/work" -maxdepth 1 -name "$t-*-*" -newer "$marker" | wc -l)
  if [ $rc -ne 0 ] || [ "${FUZZ_KEEP_GOING:-0}" = "1" -a "$crashes" -gt 0 ]; then
    echo "FAIL $t (exit $rc, $crashes artifact(s)); log: $log"
    grep -E "runtime error|ERROR: |invariant failed|SUMMARY" "$log" | sort | uniq -c | head -20
    failed+=("$t")
  else
    echo "ok $t"
  fi
done
ntargets=$(echo $targets | wc -w)
echo "fuzz: $((ntargets - ${#failed[@]})) passed, ${#failed[@]} failed"
if [ "$ntargets" -eq 0 ]; then
  echo "fuzz: no target ran (FUZZ_TARGETS, $FZ/targets.txt): nothing was checked" >&2
  exit 1
fi
if [ ${#failed[@]} -gt 0 ]; then
  echo "fuzz: failed: ${failed[*]}"
  exit 1
fi
