#!/usr/bin/env bash
# Runs the C examples end to end: a daemon, the trainer and the generation loop against it.
# usage: run_examples.sh LORAFLIPD TRAINER GENERATOR
set -euo pipefail
daemon=$1 trainer=$2 generator=$3
instance="examples-$$"
dir=$(mktemp -d /tmp/lftest-examples.XXXXXX)
cleanup() {
  if [ -n "${daemon_pid:-}" ]; then kill -9 "$daemon_pid" 2>/dev/null || true; fi
  "$daemon" --instance "$instance" --remove-arena >/dev/null
  rm -rf "$dir"
}
trap cleanup EXIT
"$daemon" --instance "$instance" --runtime-dir "$dir/run" --arena-size 64M >"$dir/daemon.log" 2>&1 &
daemon_pid=$!
for _ in $(seq 100); do [ -S "$dir/run/control" ] && break; sleep 0.05; done
"$generator" "$dir/run" policy 25 >"$dir/generator.log" 2>&1 &
generator_pid=$!
"$trainer" "$dir/run" policy 25 5
wait "$generator_pid"
cat "$dir/generator.log"
grep -q "torn elements: 0" "$dir/generator.log"
kill -TERM "$daemon_pid"
wait "$daemon_pid"
daemon_pid=
