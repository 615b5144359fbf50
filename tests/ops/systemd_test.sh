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

unit="$dir/loraflipd@ops.service"
sed "s|^ExecStart=/usr/sbin/loraflipd |ExecStart=$daemon |" "$src/loraflipd@.service" >"$unit"
grep -q "^ExecStart=$daemon " "$unit" || fail "the unit has no 'ExecStart=/usr/sbin/loraflipd ' line to rewrite"

systemd-analyze verify "$unit" >"$dir/verify.log" 2>&1
rc=$?
cat "$dir/verify.log"
[ "$rc" = 0 ] || fail "systemd-analyze verify exited $rc"
# verify only warns about unknown keys and bad values; any line about the unit is a failure.
if grep -F "$(basename "$unit")" "$dir/verify.log" >/dev/null; then
  fail "systemd-analyze verify complained about the unit"
fi

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

if systemd-analyze security --help 2>&1 | grep -q -- '--offline'; then
  systemd-analyze security --offline=yes "$unit" >"$dir/security.log" 2>&1
  score=$(sed -n 's/.*Overall exposure level for [^:]*: \([0-9.]*\).*/\1/p' "$dir/security.log")
  echo "systemd-analyze security: exposure ${score:-unknown}"
  if [ -z "$score" ]; then
    fail "no exposure score from systemd-analyze security: $(tail -3 "$dir/security.log")"
  elif ! awk -v s="$score" 'BEGIN { exit !(s <= 3.0) }'; then
    fail "exposure $score is over 3.0"
  fi
else
  echo "note: systemd-analyze security --offline needs systemd 250; score not checked"
fi

# The relay's unit, beside a daemon unit of the same instance (its Requires= names it).
relay_unit="$dir/loraflip-relay@ops.service"
sed "s|^ExecStart=/usr/bin/loraflip-relay |ExecStart=$relay |" "$src/loraflip-relay@.service" >"$relay_unit"
grep -q "^ExecStart=$relay " "$relay_unit" || fail "the relay unit has no 'ExecStart=/usr/bin/loraflip-relay ' line to rewrite"
systemd-analyze verify "$relay_unit" >"$dir/verify-relay.log" 2>&1
rc=$?
cat "$dir/verify-relay.log"
[ "$rc" = 0 ] || fail "systemd-analyze verify of the relay unit exited $rc"
if grep -F "$(basename "$relay_unit")" "$dir/verify-relay.log" >/dev/null; then
  fail "systemd-analyze verify complained about the relay unit"
fi
if systemd-analyze security --help 2>&1 | grep -q -- '--offline'; then
  systemd-analyze security --offline=yes "$relay_unit" >"$dir/security-relay.log" 2>&1
  score=$(sed -n 's/.*Overall exposure level for [^:]*: \([0-9.]*\).*/\1/p' "$dir/security-relay.log")
  echo "systemd-analyze security (relay): exposure ${score:-unknown}"
  if [ -z "$score" ] || ! awk -v s="$score" 'BEGIN { exit !(s <= 3.0) }'; then
    fail "relay unit exposure ${score:-unknown} is not at most 3.0"
  fi
fi

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
