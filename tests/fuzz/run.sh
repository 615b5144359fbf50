#!/usr/bin/env bash
# Fuzzes the daemon's request handler with libFuzzer for a bounded time.
#
#   tests/fuzz/run.sh [--seconds N] [--build DIR] [-- LIBFUZZER_ARGS...]
#
# Builds tests/fuzz/fuzz_handler with clang (-fsanitize=fuzzer,address,undefined, the daemon
# code instrumented too) in its own build directory (default /tmp/loraflip-fuzz-build; one
# that another checkout configured is made anew), runs it from the seed corpus for N seconds
# (default 60), and copies every crash it finds into tests/fuzz/corpus/ as a regression input
# for the replay test (meson test --suite fuzz).
# Exits 1 when it found a crash. Needs clang and libclang-rt-14-dev (Debian 12: scripts/setup
# installs them; so does this script, with apt-get, when they are missing).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
seconds=60
build=/tmp/loraflip-fuzz-build
extra=()
while [ $# -gt 0 ]; do
  case $1 in
    --seconds) seconds=$2; shift 2 ;;
    --build) build=$2; shift 2 ;;
    --) shift; extra=("$@"); break ;;
    -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
done

have_libfuzzer() {
  command -v clang++ >/dev/null &&
    echo 'extern "C" int LLVMFuzzerTestOneInput(const char*, unsigned long){return 0;}' |
      clang++ -x c++ -fsanitize=fuzzer - -o /dev/null 2>/dev/null
}
if ! have_libfuzzer && command -v apt-get >/dev/null; then
  # The packages scripts/setup installs, for a machine where this script runs on its own.
  sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo"
  echo "run.sh: installing clang libclang-rt-14-dev"
  { $sudo apt-get install -y -qq --no-install-recommends clang libclang-rt-14-dev ||
    { $sudo apt-get update -qq && $sudo apt-get install -y -qq --no-install-recommends \
        clang libclang-rt-14-dev; }; } >/dev/null || true
fi
if ! have_libfuzzer; then
  echo "run.sh needs clang++ with libFuzzer (Debian 12: apt-get install clang libclang-rt-14-dev)" >&2
  exit 2
fi
clangxx=$(command -v clang++)
clangc=${clangxx%++}

# A build directory kept from another checkout (a fresh clone in CI finds the one of the
# checkout it was cloned from) would fuzz that checkout's code: such a build is made anew.
if [ -f "$build/meson-info/meson-info.json" ] && ! python3 - "$build/meson-info/meson-info.json" "$root" <<'PY'
import json, os, sys
source = json.load(open(sys.argv[1]))["directories"]["source"]
sys.exit(os.path.realpath(source) != os.path.realpath(sys.argv[2]))
PY
then
  echo "run.sh: $build was built from another source tree: building it anew"
  rm -rf "$build"
fi
if [ ! -f "$build/build.ninja" ]; then
  CC=$clangc CXX=$clangxx meson setup "$build" "$root" -Dcuda=disabled -Dbench=false \
    -Dbuildtype=debugoptimized -Db_sanitize=address,undefined -Db_lundef=false \
    -Dcpp_args=-fsanitize=fuzzer-no-link -Dc_args=-fsanitize=fuzzer-no-link >/dev/null
fi
ninja -C "$build" -j"${JOBS:-2}" tests/fuzz/fuzz_handler tests/fuzz/make_corpus

work=$(mktemp -d /tmp/loraflip-fuzz.XXXXXX)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/corpus" "$work/artifacts"
"$build/tests/fuzz/make_corpus" "$work/seeds" >/dev/null
cp "$here"/corpus/* "$work/seeds/"
export ASAN_OPTIONS=${ASAN_OPTIONS:-abort_on_error=1:detect_leaks=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-halt_on_error=1:print_stacktrace=1}
set +e
"$build/tests/fuzz/fuzz_handler" "$work/corpus" "$work/seeds" \
  -dict="$here/handler.dict" -max_total_time="$seconds" -max_len=65536 -timeout=10 \
  -rss_limit_mb=2048 -artifact_prefix="$work/artifacts/" -print_final_stats=1 "${extra[@]}" \
  2>&1 | tee "$work/fuzz.log" | grep -E '^#[0-9]+[[:space:]]+(pulse|DONE|INITED)|ERROR|violation|SUMMARY|stat::'
status=${PIPESTATUS[0]}
set -e

found=0
for crash in "$work"/artifacts/*; do
  [ -e "$crash" ] || continue
  found=$((found + 1))
  name="regress-$(basename "$crash")"
  cp "$crash" "$here/corpus/$name"
  echo "kept $(basename "$crash") as tests/fuzz/corpus/$name (replayed by: meson test --suite fuzz)"
done
if [ "$found" -gt 0 ] || [ "$status" != 0 ]; then
  echo "fuzzing found $found crash(es), exit status $status; the log's last lines:"
  tail -40 "$work/fuzz.log"
  exit 1
fi
echo "fuzzed for ${seconds}s: no crash"
