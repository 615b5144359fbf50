#!/usr/bin/env bash
# loraflipctl end to end: a real daemon, the C example trainer to publish versions, and every
# subcommand with its output and exit code (0 ok, 1 daemon error, 2 usage, 3 unreachable).
# usage: ctl_test.sh LORAFLIPD LORAFLIPCTL TRAINER
set -uo pipefail
daemon=$1 ctl=$2 trainer=$3
instance="ops-$$"
dir=$(mktemp -d /tmp/lftest-ops.XXXXXX)
run="$dir/run"
failures=0
checks=0

cleanup() {
  [ -n "${watch_pid:-}" ] && kill -9 "$watch_pid" 2>/dev/null
  [ -n "${daemon_pid:-}" ] && kill -9 "$daemon_pid" 2>/dev/null
  "$daemon" --instance "$instance" --remove-arena >/dev/null 2>&1
  rm -rf "$dir"
}
trap cleanup EXIT

fail() { echo "FAIL: $*"; failures=$((failures + 1)); }
# expect CODE DESCRIPTION -- COMMAND...: runs it, output in $out, stderr in $err.
expect() {
  local want=$1 what=$2
  shift 3
  checks=$((checks + 1))
  "$@" >"$dir/out" 2>"$dir/err"
  local got=$?
  out=$(cat "$dir/out")
  err=$(cat "$dir/err")
  if [ "$got" != "$want" ]; then
    fail "$what: exit $got, wanted $want"
    echo "  stdout: $out"
    echo "  stderr: $err"
    return 1
  fi
  return 0
}
contains() {  # contains DESCRIPTION HAYSTACK NEEDLE
  checks=$((checks + 1))
  case "$2" in *"$3"*) ;; *) fail "$1: no '$3' in:"; echo "$2" | sed 's/^/  | /' ;; esac
}
lacks() {
  checks=$((checks + 1))
  case "$2" in *"$3"*) fail "$1: unexpected '$3' in:"; echo "$2" | sed 's/^/  | /' ;; esac
}
# (Background jobs run "$ctl" directly, not this function, so that $! is its pid.)
ctl() { "$ctl" --runtime-dir "$run" "$@"; }

# Checks the Prometheus text exposition format: every line a HELP, a TYPE or a sample
# `name{label="value",...} number`; every sample's family has a TYPE line before it; no family
# is declared twice.
check_prometheus() {
  local text=$1 bad
  checks=$((checks + 1))
  bad=$(printf '%s\n' "$text" | grep -Ev \
    -e '^# HELP [a-zA-Z_:][a-zA-Z0-9_:]* .+$' \
    -e '^# TYPE [a-zA-Z_:][a-zA-Z0-9_:]* (counter|gauge|histogram|summary|untyped)$' \
    -e '^[a-zA-Z_:][a-zA-Z0-9_:]*(\{[a-zA-Z_][a-zA-Z0-9_]*="([^"\\]|\\.)*"(,[a-zA-Z_][a-zA-Z0-9_]*="([^"\\]|\\.)*")*\})? [-+]?([0-9]+(\.[0-9]*)?([eE][-+]?[0-9]+)?|Inf|NaN)$')
  [ -z "$bad" ] || fail "metrics lines not in the Prometheus format: $bad"
  bad=$(printf '%s\n' "$text" | awk '
    /^# TYPE / { if ($3 in typed) print "declared twice: " $3; typed[$3] = 1; next }
    /^#/ { next }
    { name = $0; sub(/[{ ].*/, "", name); if (!(name in typed)) print "no TYPE before: " name }')
  [ -z "$bad" ] || fail "metrics families: $bad"
}

# ---- usage errors: exit 2, before any connection ----
expect 2 "no command" -- "$ctl"
expect 2 "unknown command" -- "$ctl" frobnicate
expect 2 "unknown option" -- "$ctl" --frob status
expect 2 "info without a name" -- "$ctl" info
expect 2 "rollback with a bad version" -- "$ctl" rollback policy two
expect 2 "--count outside watch" -- "$ctl" list --count 2
expect 0 "help" -- "$ctl" --help
contains "help" "$out" "rollback NAME VERSION"

# ---- no daemon yet: exit 3, and metrics still say the daemon is down ----
expect 3 "status without a daemon" -- ctl status
contains "status without a daemon" "$err" "LF_E_CONNECTION"
expect 3 "metrics without a daemon" -- ctl metrics
contains "metrics without a daemon" "$out" 'loraflip_up{loraflip_instance="run"} 0'
check_prometheus "$out"
expect 3 "watch without a daemon" -- ctl watch

# ---- a daemon ----
"$daemon" --instance "$instance" --runtime-dir "$run" --arena-size 64M --history 2 \
  >"$dir/daemon.log" 2>&1 &
daemon_pid=$!
for _ in $(seq 200); do "$ctl" --runtime-dir "$run" --timeout-ms 200 status >/dev/null 2>&1 && break; sleep 0.05; done

expect 0 "status" -- ctl status
contains "status" "$out" "instance  $instance"
contains "status" "$out" "adapters  0 of 64"
expect 0 "status --json" -- ctl --json status
contains "status --json" "$out" "\"instance\":\"$instance\""
expect 0 "list of nothing" -- ctl list
contains "list of nothing" "$out" "NAME  VERSION  TENSORS  SLOT SIZE  SLOTS  HISTORY"

# watch: a subscription reaches the daemon asynchronously (ZeroMQ's slow joiner), so publish
# one version at a time until the watch has seen one, then two more; the watch stops by itself
# after three flips, which must be consecutive commits.
"$ctl" --runtime-dir "$run" watch policy --count 3 --json >"$dir/watch1" 2>"$dir/watch1.err" &
watch_pid=$!
for _ in $(seq 100); do
  "$trainer" "$run" policy 1 >"$dir/trainer.log" 2>&1 || fail "trainer: $(cat "$dir/trainer.log")"
  [ -s "$dir/watch1" ] && break
  sleep 0.1
done
"$trainer" "$run" policy 2 20 >"$dir/trainer.log" 2>&1 || fail "trainer: $(cat "$dir/trainer.log")"
for _ in $(seq 200); do kill -0 "$watch_pid" 2>/dev/null || break; sleep 0.05; done
if kill -0 "$watch_pid" 2>/dev/null; then
  fail "watch --count 3 did not stop after three flips"
  kill -9 "$watch_pid"
fi
wait "$watch_pid"
watch_rc=$?
watch_pid=
checks=$((checks + 1))
[ "$watch_rc" = 0 ] || fail "watch exit $watch_rc: $(cat "$dir/watch1.err")"
watch1=$(cat "$dir/watch1")
checks=$((checks + 1))
[ "$(wc -l <"$dir/watch1")" = 3 ] || fail "watch printed $(wc -l <"$dir/watch1") lines: $watch1"
expect 0 "list --json" -- ctl --json list
V=$(printf '%s' "$out" | sed -n 's/.*"name":"policy","version":\([0-9]*\).*/\1/p')
checks=$((checks + 1))
[ -n "$V" ] && [ "$V" -ge 3 ] || { fail "no version >= 3 in: $out"; V=3; }
P=$((V - 1))
contains "list --json" "$out" "{\"adapters\":[{\"name\":\"policy\",\"version\":$V,\"tensors\":8,"
contains "watch json" "$watch1" "\"adapter\":\"policy\",\"kind\":\"commit\",\"version\":$((V - 1)),\"previous\":$((V - 2)),\"seq\":$((V - 1)),\"missed\":0}"
contains "watch json" "$watch1" "\"adapter\":\"policy\",\"kind\":\"commit\",\"version\":$V,\"previous\":$((V - 1)),\"seq\":$V,\"missed\":0}"

expect 0 "list" -- ctl list
contains "list" "$out" "$(printf 'policy  %7s  %7s  ' "$V" 8)"
expect 0 "info" -- ctl info policy
contains "info" "$out" "version    $V (last assigned $V)"
contains "info" "$out" "rank 8, alpha 16, targets q_proj,v_proj"
contains "info" "$out" "base_model.model.model.layers.1.self_attn.v_proj.lora_B.weight  f32    [256, 8]"
expect 0 "info --json" -- ctl info policy --json
contains "info --json" "$out" "\"counters\":{\"commits\":$V,\"aborts\":0,\"rollbacks\":0,\"write_ns_total\":"
expect 1 "info of an unknown adapter" -- ctl info nosuch
contains "info of an unknown adapter" "$err" "LF_E_NOT_FOUND"

# rollback, seen by a human-readable watch of every adapter. A second adapter, "probe",
# publishes until the watch is subscribed; Ctrl-C (SIGINT) then ends the watch with status 0.
"$ctl" --runtime-dir "$run" watch >"$dir/watch2" 2>/dev/null &
watch_pid=$!
for _ in $(seq 100); do
  "$trainer" "$run" probe 1 >"$dir/trainer.log" 2>&1 || fail "trainer: $(cat "$dir/trainer.log")"
  grep -q "  probe  commit  " "$dir/watch2" && break
  sleep 0.1
done
expect 0 "rollback" -- ctl rollback policy "$P"
contains "rollback" "$out" "'policy' serves version $P again"
for _ in $(seq 100); do grep -q "  policy  rollback  " "$dir/watch2" && break; sleep 0.05; done
kill -INT "$watch_pid"
for _ in $(seq 100); do kill -0 "$watch_pid" 2>/dev/null || break; sleep 0.05; done
kill -9 "$watch_pid" 2>/dev/null && fail "watch did not stop on SIGINT"
wait "$watch_pid"
watch_rc=$?
watch_pid=
checks=$((checks + 1))
[ "$watch_rc" = 0 ] || fail "watch ended by SIGINT exited $watch_rc"
contains "watch text" "$(cat "$dir/watch2")" "  policy  rollback  $V -> $P"
expect 0 "drop the probe" -- ctl drop probe
expect 1 "rollback to a version never made" -- ctl rollback policy 999999
contains "rollback to a version never made" "$err" "LF_E_"
expect 1 "rollback of an unknown adapter" -- ctl rollback nosuch 1
expect 0 "list after rollback" -- ctl list
contains "list after rollback" "$out" "$(printf 'policy  %7s  ' "$P")"

# metrics, against the counters of the same moment
expect 0 "status --json before metrics" -- ctl --json status
flips=$(printf '%s' "$out" | sed -n 's/.*"flips":\([0-9]*\).*/\1/p')
expect 0 "metrics" -- ctl metrics
metrics=$out
check_prometheus "$metrics"
contains "metrics" "$metrics" "loraflip_up{loraflip_instance=\"$instance\"} 1"
contains "metrics" "$metrics" "loraflip_adapters{loraflip_instance=\"$instance\"} 1"
contains "metrics" "$metrics" "loraflip_adapter_version{loraflip_instance=\"$instance\",adapter=\"policy\"} $P"
contains "metrics" "$metrics" "loraflip_adapter_last_version{loraflip_instance=\"$instance\",adapter=\"policy\"} $V"
contains "metrics" "$metrics" "loraflip_adapter_commits_total{loraflip_instance=\"$instance\",adapter=\"policy\"} $V"
contains "metrics" "$metrics" "loraflip_adapter_rollbacks_total{loraflip_instance=\"$instance\",adapter=\"policy\"} 1"
contains "metrics" "$metrics" "loraflip_flips_total{loraflip_instance=\"$instance\"} $flips"
contains "metrics" "$metrics" "loraflip_arena_bytes{loraflip_instance=\"$instance\"} 67108864"
contains "metrics" "$metrics" "# TYPE loraflip_adapter_commits_total counter"
lacks "metrics" "$metrics" "adapter=\"probe\""

# drop
expect 0 "drop" -- ctl drop policy
contains "drop" "$out" "dropped 'policy'"
expect 1 "drop again" -- ctl drop policy
contains "drop again" "$err" "LF_E_NOT_FOUND"
expect 0 "list after drop" -- ctl list
lacks "list after drop" "$out" "policy"
expect 0 "metrics with no adapters" -- ctl metrics
check_prometheus "$out"
lacks "metrics with no adapters" "$out" "loraflip_adapter_"

# the daemon goes away: exit 3 again
kill -9 "$daemon_pid"
wait "$daemon_pid" 2>/dev/null
daemon_pid=
expect 3 "status after the daemon died" -- ctl --timeout-ms 500 status

echo "ctl: $checks checks, $failures failed"
[ "$failures" = 0 ]
