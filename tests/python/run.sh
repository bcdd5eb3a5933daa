#!/usr/bin/env bash
# Runs the Python API client (tests/python/api_client.py) against a real daemon on a fresh
# data directory. Usage: tests/python/run.sh <path to the lattice binary>
set -euo pipefail
bin=$1
here=$(cd "$(dirname "$0")" && pwd)
dir=$(mktemp -d)
trap '"$bin" --data-dir "$dir" node stop >/dev/null 2>&1 || true; rm -rf "$dir"' EXIT
"$bin" --data-dir "$dir" --json daemon > "$dir.daemon.log" 2>&1 &
for _ in $(seq 1 200); do
  [ -S "$dir/lattice.sock" ] && break
  sleep 0.05
done
store=$("$bin" --data-dir "$dir" --json store create --type kv --name python \
  | python3 -c 'import json, sys; print(json.loads(sys.stdin.read().splitlines()[-1])["store"])')
python3 "$here/api_client.py" "$dir" "$store"
