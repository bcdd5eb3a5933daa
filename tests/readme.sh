#!/usr/bin/env bash
# Runs every command README.md shows under "Use it" and "Low-level log access", at a small
# size, against a built `lattice` binary: temporary data directories, loopback only. Each
# step checks what it printed, so a command that breaks (or a README line that no longer
# works) fails CI.
#
#   tests/readme.sh target/release/lattice
set -euo pipefail

L=$(realpath "${1:-target/release/lattice}")
ROOT=$(cd "$(dirname "$0")/.." && pwd)
T=$(mktemp -d)
A="$T/a"
B="$T/other"
DAEMON=""
cleanup() {
  if [ -n "$DAEMON" ]; then kill "$DAEMON" 2>/dev/null || true; fi
  rm -rf "$T"
}
trap cleanup EXIT

a() { "$L" --data-dir "$A" "$@"; }
b() { "$L" --data-dir "$B" "$@"; }
# Prints one field of a command's JSON output (its last line, or all of it when pretty).
field() {
  python3 -c "
import json, sys
text = sys.stdin.read()
try:
    v = json.loads(text.splitlines()[-1])
except ValueError:
    v = json.loads(text)
print(v$1)"
}
step() { echo "-- $*"; }

step "lattice daemon &"
a --json daemon > "$T/daemon.out" 2> "$T/daemon.err" &
DAEMON=$!
for _ in $(seq 1 300); do
  grep -q '"running"' "$T/daemon.out" 2>/dev/null && break
  kill -0 "$DAEMON" 2>/dev/null || { cat "$T/daemon.err"; exit 1; }
  sleep 0.1
done
grep -q '"running"' "$T/daemon.out"

step "node set-name"
a node set-name laptop
step "store create --type kv"
S=$(a --json store create --type kv --name notes | field '["store"]')
step "put / get"
a put "$S" greeting hello
[ "$(a --json get "$S" greeting | field '["value"]')" = hello ]
step "put --file"
printf 'a small photo' > "$T/photo.txt"
a put "$S" photo --file "$T/photo.txt"
[ "$(a --json get "$S" photo | field '["value"]')" = "a small photo" ]
step "store call batch"
a store call "$S" batch --json-args '{"ops": [{"put": "a", "value": "1"}, {"delete": "greeting"}]}'
[ "$(a --json get "$S" a | field '["value"]')" = 1 ]
step "store invite / join"
TOKEN=$(a --json store invite "$S" | field '["token"]')
b store join "$TOKEN"
[ "$(b --json get "$S" a | field '["value"]')" = 1 ]
step "store create --parent (child store)"
C=$(a --json store create --type counter --parent "$S" | field '["store"]')
a store call "$C" increment --json-args '{"by": 2}'
step "store peers / rejected"
[ "$(a --json store peers "$S" | grep -c '"peer"')" = 2 ]
a store rejected "$S"
step "store watch"
a --json store watch "$S" > "$T/watch.out" &
WATCH=$!
for _ in $(seq 1 100); do
  a put "$S" watched yes > /dev/null
  grep -q '"topic"' "$T/watch.out" 2>/dev/null && break
  sleep 0.1
done
kill "$WATCH" 2>/dev/null || true
grep -q '"topic"' "$T/watch.out"
step "store leave / rejoin"
b store leave "$S"
TOKEN=$(a --json store invite "$S" | field '["token"]')
b store rejoin "$TOKEN"
step "store revoke-peer"
OTHER=$(b --json node id | field '["node"]')
a store revoke-peer "$S" "$OTHER"
step "module install / inspect"
M=$(a --json module install tests/guests/dist/evil.wasm | field '["module"]')
a module inspect "$M" | grep -q op
step "store status (the revocation above wrote epoch 1)"
[ "$(a --json store status "$S" | field '["state"]')" = ready ]
[ "$(a --json store status "$S" | field '["epoch"]["number"]')" -ge 1 ]
a store status "$S" | grep -q '^epoch'
a store status "$S" | grep -q '^log '
step "store repair (projections rebuilt, the log verified and kept) and log verify, daemon running"
a --json store repair "$S" | field '["projections_rebuilt"]' | grep -q True
[ "$(a --json get "$S" a | field '["value"]')" = 1 ]
a log verify "$S" | grep -q '^ok'
step "store prune-policy / prune (this node is the store's only active member: the cut is final at once)"
a store prune-policy "$S" keep-epochs --keep 2
[ "$(a --json store prune-policy "$S" | field '["mode"]')" = keep-epochs ]
a store prune-policy "$S" off
PRUNED=$(a --json store prune "$S")
[ "$(echo "$PRUNED" | field '["not_now"]')" = None ]
[ "$(echo "$PRUNED" | field '["deleted"]')" -ge 1 ]
[ "$(a --json get "$S" a | field '["value"]')" = 1 ]
a log verify "$S" | grep -q '^ok'
step "cas put / get / status"
head -c 200000 /dev/urandom > "$T/video.mp4"
BLOB=$(a --json cas put "$S" "$T/video.mp4" --pin | field '["hash"]')
a cas get "$S" "$BLOB" -o "$T/video.out"
cmp "$T/video.mp4" "$T/video.out"
a cas status "$S" --list | grep -q "$BLOB"
[ "$(a --json cas policy "$S" copies --copies 2 | field '["copies"]')" = 2 ]
a --json cas gc | field '["deleted"]'
HS=$(a --json store create --type kv --name headless-demo | field '["store"]')
a store headless "$HS" on
[ "$(a --json store status "$HS" | field '["headless_by_choice"]')" = True ]
a store headless "$HS" off
step "fs (a filesystem store without a mount)"
FS=$(a --json store create --type fs --name files | field '["store"]')
a fs mkdir -p "$FS" docs
a fs put "$FS" "$T/video.mp4" docs/report.pdf
a fs ls "$FS" docs | grep -q report.pdf
a fs get "$FS" docs/report.pdf -o "$T/copy.pdf"
step "fs sync"
mkdir -p "$T/Mirror/new dir"
printf 'from the folder' > "$T/Mirror/new dir/local.txt"
a --json fs sync "$FS" "$T/Mirror" | field '["to_store"]' | grep -q "new dir/local.txt"
cmp "$T/Mirror/docs/report.pdf" "$T/video.mp4"
[ "$(a fs get "$FS" "new dir/local.txt")" = "from the folder" ]
cmp "$T/video.mp4" "$T/copy.pdf"
if [ -e /dev/fuse ] && command -v fusermount3 > /dev/null; then
  step "fs mount / umount"
  mkdir "$T/Files"
  a fs mount "$FS" "$T/Files"
  cmp "$T/video.mp4" "$T/Files/docs/report.pdf"
  echo saved > "$T/Files/docs/note.txt"
  [ "$(a fs get "$FS" docs/note.txt)" = saved ]
  a fs umount "$T/Files"
else
  echo "(fs mount skipped: no /dev/fuse or fusermount3 here)"
fi
step "node stop"
a node stop
wait "$DAEMON" || true
DAEMON=""

step "bench store / sync / cas (small)"
"$L" bench store --type kv --count 2000
"$L" bench sync --count 2000 --diff 0.01
"$L" bench cas --big-mib 16 --small 200 --api-mib 16 --json | field '["api_fetch_mb_per_s"]'
if [ -e /dev/fuse ] && command -v fusermount3 > /dev/null; then
  "$L" bench fs --big-mib 16 --small 100 --json | field '["small_files_per_s"]'
  "$L" demo --fs
fi

step "sim run (scenarios on simulated nodes)"
"$L" sim run "$ROOT/examples/sim/mesh-50.rhai" --json | tail -1 | field '["converged"]'
"$L" sim run "$ROOT/examples/sim/partition-storm.rhai" --seeds 1..3
"$L" sim soak --seeds 10 --json | tail -1 | field '["passed"]'

step "log create / append / status / verify"
LOG=$(a --json log create --ops "my first store" | field '["store"]')
a log append "${LOG:0:12}" "hello"
a log status "${LOG:0:12}"
a log verify "${LOG:0:12}"
step "bench log --json (small)"
"$L" bench log --count 2000 --json | field '["authored_per_s"]'
echo "every README command ran"
