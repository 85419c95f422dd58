#!/usr/bin/env bash
# README command two: installs what is missing, checks the C formatting
# (.clang-format), runs every fuzz target briefly, then builds and runs every
# test with ctest — the Debug build, then the ASan+UBSan build.
#   tests/run.sh                 everything, both builds
#   tests/run.sh -L unit         extra arguments go to ctest (both builds)
#   FANOUT_SKIP_ASAN=1 tests/run.sh   the Debug build only (quick local runs)
#   FANOUT_SKIP_FUZZ=1, FANOUT_FUZZ_SECONDS=N   skip / lengthen the fuzz step
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

"$ROOT/deploy/install-deps.sh"
# npm packages of the browser tests (lock file); ctest's browser.npm_install
# runs it again and fails the browser tests if it cannot.
"$ROOT/tests/browser/install.sh" || echo "run.sh: tests/browser/install.sh failed" >&2

# Servers started by tests want more than the default 1024 descriptors;
# 20,000 is the hard limit on our machines.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

JOBS=$(nproc)
status=0

# The C sources follow .clang-format (clang-format 14, Debian 12); a file
# that does not fails the run. Fix with: clang-format -i FILE.
echo "=== clang-format check ==="
mapfile -t c_files < <(cd "$ROOT" && { git ls-files '*.c' '*.h' 2>/dev/null ||
  find common delivery ingest deploy tests -name '*.[ch]'; } | grep -v '^tests/fuzz/corpus/')
if (cd "$ROOT" && clang-format --dry-run --Werror "${c_files[@]}"); then
  echo "clang-format: ${#c_files[@]} files formatted"
else
  echo "clang-format: files above differ from .clang-format" >&2
  status=1
fi
run_suite() {
  local dir=$1 type=$2
  shift 2
  echo "=== $type build in $dir ==="
  cmake -S "$ROOT" -B "$ROOT/$dir" -G Ninja -DCMAKE_BUILD_TYPE="$type" >/dev/null
  cmake --build "$ROOT/$dir" -j "$JOBS"
  # Integration tests share fixtures and measure timing: one at a time.
  (cd "$ROOT/$dir" && ctest --output-on-failure --timeout 900 "$@") || status=1
}

# First the libFuzzer targets (clang + ASan/UBSan), a short bounded run each;
# tests/fuzz/run.sh 600 runs them longer. Skipped when ctest arguments
# select a subset.
if [ $# -eq 0 ] && [ "${FANOUT_SKIP_FUZZ:-0}" != "1" ]; then
  echo "=== fuzz targets (clang + libFuzzer) in build-fuzz ==="
  "$ROOT/tests/fuzz/run.sh" "${FANOUT_FUZZ_SECONDS:-10}" || status=1
fi
run_suite build Debug "$@"
if [ "${FANOUT_SKIP_ASAN:-0}" != "1" ]; then
  run_suite build-asan Asan "$@"
fi
exit $status
