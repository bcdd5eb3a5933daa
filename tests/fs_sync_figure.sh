#!/usr/bin/env bash
# The figure docs/fs.md gives for `lattice fs sync`: N × 4 KiB files (default 1000) in two
# folders synced from a folder into a filesystem store on daemon A, then from the store into
# a folder on daemon B (a member), then a round with nothing to do. Loopback only.
#
#   tests/fs_sync_figure.sh target/release/lattice [N]
set -euo pipefail
L=$(realpath "${1:-target/release/lattice}")
N=${2:-1000}
T=$(mktemp -d)
A="$T/a"
B="$T/b"
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$T"
}
trap cleanup EXIT
field() { python3 -c "import json, sys; print(json.loads(sys.stdin.read().splitlines()[-1])$1)"; }
now() { python3 -c 'import time; print(time.time())'; }
rate() { python3 -c "print(f'{$1} files in {$3 - $2:.2f} s: {$1 / ($3 - $2):.0f} files/s')"; }
start() {
  "$L" --data-dir "$1" --json daemon > "$1.out" 2> /dev/null &
  PIDS+=($!)
  for _ in $(seq 1 300); do grep -q running "$1.out" 2> /dev/null && return; sleep 0.1; done
  echo "daemon on $1 did not start" >&2
  exit 1
}
mkdir -p "$A" "$B" "$T/fa/d1" "$T/fa/d2"
start "$A"
start "$B"
S=$("$L" --data-dir "$A" --json store create --type fs --name files | field '["store"]')
TOKEN=$("$L" --data-dir "$A" --json store invite "$S" | field '["token"]')
"$L" --data-dir "$B" store join "$TOKEN" > /dev/null
for i in $(seq 1 "$N"); do head -c 4096 /dev/urandom > "$T/fa/d$((i % 2 + 1))/f$i"; done
listed() { "$L" --data-dir "$B" --json fs ls "$S" "$1" | field '["items"].__len__()'; }

t0=$(now)
"$L" --data-dir "$A" fs sync "$S" "$T/fa" | tail -n 1
t1=$(now)
echo "folder → store (A): $(rate "$N" "$t0" "$t1")"
until [ "$(listed d1)" -ge $(((N + 1) / 2)) ] && [ "$(listed d2)" -ge $((N / 2)) ]; do :; done
t2=$(now)
"$L" --data-dir "$B" fs sync "$S" "$T/fb" | tail -n 1
t3=$(now)
echo "store → folder (B): $(rate "$N" "$t2" "$t3")"
diff -r --exclude='.lattice-*' "$T/fa" "$T/fb"
echo "the two folders are identical"
t4=$(now)
"$L" --data-dir "$B" fs sync "$S" "$T/fb" > /dev/null
t5=$(now)
python3 -c "print(f'a round with nothing to do: {$t5 - $t4:.3f} s')"
