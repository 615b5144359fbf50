#!/usr/bin/env bash
# Checks the systemd files: the units (the daemon's and the relay's) pass `systemd-analyze
# verify` (with ExecStart pointed at the programs just built, since verify wants an executable
# there) without a single warning, their sandboxes score at most 3.0 in `systemd-analyze
# security`, and the sysusers and tmpfiles entries parse. Exits 77 (meson's "skipped") where
# systemd-analyze is missing.
# usage: systemd_test.sh SYSTEMD_DIR LORAFLIPD LORAFLIP_RELAY
set -uo pipefail
src=$1 daemon=$2 relay=$3
if ! command -v systemd-analyze >/dev/null; then
  echo "SKIP: systemd-analyze is not installed (Debian: apt-get install systemd)"
  exit 77
fi
dir=$(mktemp -d /tmp/lftest-systemd.XXXXXX)
trap 'rm -rf "$dir"' EXIT
failures=0
fail() { echo "FAIL: $*"; failures=$((failures + 1)); }

# A unit from SYSTEMD_DIR with its ExecStart pointed at PROGRAM: copies SOURCE_NAME, whose line
# starts with "ExecStart=INSTALLED_PATH ", to the scratch folder as UNIT_NAME.
unit_for() {  # SOURCE_NAME UNIT_NAME INSTALLED_PATH PROGRAM
  local unit="$dir/$2"
  sed "s|^ExecStart=$3 |ExecStart=$4 |" "$src/$1" >"$unit"
  grep -q "^ExecStart=$4 " "$unit" || fail "$1 has no 'ExecStart=$3 ' line to rewrite"
  echo "$unit"
}

# `systemd-analyze verify` must pass without a line about the unit (verify only warns about
# unknown keys and bad values), and the sandbox must score at most 3.0.
verify_and_score() {  # UNIT
  local unit=$1 name rc score
  name=$(basename "$unit")
  systemd-analyze verify "$unit" >"$dir/verify-$name.log" 2>&1
  rc=$?
  cat "$dir/verify-$name.log"
  [ "$rc" = 0 ] || fail "systemd-analyze verify of $name exited $rc"
  grep -F "$name" "$dir/verify-$name.log" >/dev/null && fail "systemd-analyze verify complained about $name"
  if ! systemd-analyze security --help 2>&1 | grep -q -- '--offline'; then
    echo "note: systemd-analyze security --offline needs systemd 250; score of $name not checked"
    return
  fi
  systemd-analyze security --offline=yes "$unit" >"$dir/security-$name.log" 2>&1
  score=$(sed -n 's/.*Overall exposure level for [^:]*: \([0-9.]*\).*/\1/p' "$dir/security-$name.log")
  echo "systemd-analyze security ($name): exposure ${score:-unknown}"
  if [ -z "$score" ]; then
    fail "no exposure score for $name: $(tail -3 "$dir/security-$name.log")"
  elif ! awk -v s="$score" 'BEGIN { exit !(s <= 3.0) }'; then
    fail "$name: exposure $score is over 3.0"
  fi
}

unit=$(unit_for loraflipd@.service loraflipd@ops.service /usr/sbin/loraflipd "$daemon")
verify_and_score "$unit"
# The checks that must hold for the daemon to work at all (see the comments in the unit).
for needed in '^RemoveIPC=no$' '^Type=notify$' '^WatchdogSec=' '^RuntimeDirectoryPreserve=yes$' \
              '^DeviceAllow=char-nvidia-frontend rw$' '^DeviceAllow=/dev/nvidiactl rw$' \
              '^DeviceAllow=/dev/nvidia-uvm rw$'; do
  grep -Eq "$needed" "$unit" || fail "the unit lacks $needed"
done
for banned in '^PrivateDevices=yes' '^ProtectProc=(invisible|noaccess|ptraceable)' \
              '^RestrictSUIDSGID=yes' '^ProcSubset=pid' '^PrivateUsers=yes'; do
  grep -Eq "$banned" "$unit" && fail "the unit sets $banned, which breaks the daemon"
done

# The relay's unit, beside a daemon unit of the same instance (its Requires= names it).
verify_and_score "$(unit_for loraflip-relay@.service loraflip-relay@ops.service /usr/bin/loraflip-relay "$relay")"

if command -v systemd-sysusers >/dev/null; then
  systemd-sysusers --dry-run "$src/loraflip.sysusers" >"$dir/sysusers.log" 2>&1 ||
    fail "systemd-sysusers rejects loraflip.sysusers: $(cat "$dir/sysusers.log")"
  grep -q "loraflip" "$dir/sysusers.log" || fail "sysusers made no loraflip user: $(cat "$dir/sysusers.log")"
fi
if command -v systemd-tmpfiles >/dev/null && [ "$(id -u)" = 0 ]; then
  mkdir -p "$dir/root"
  systemd-tmpfiles --root="$dir/root" --create "$src/loraflip.tmpfiles" >"$dir/tmpfiles.log" 2>&1 ||
    fail "systemd-tmpfiles rejects loraflip.tmpfiles: $(cat "$dir/tmpfiles.log")"
  [ "$(stat -c %a "$dir/root/run/loraflip" 2>/dev/null)" = 755 ] ||
    fail "tmpfiles did not make /run/loraflip with mode 0755"
fi

echo "systemd: $failures failed"
[ "$failures" = 0 ]
