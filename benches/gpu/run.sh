#!/usr/bin/env bash
# Runs the GPU check (check.mjs) on a machine with a GPU. When parts written by
# `node benches/gpu/check.mjs --pack` are here (benches/gpu/.cache/parts/p*/), it first joins, verifies
# and unpacks them, once: dist/, the node_modules the check needs, the model, the CUDA provider
# libraries and a node binary, for a machine without network.
#
#   bash benches/gpu/run.sh --receive    say which parts have arrived, the GPU and node found
#   bash benches/gpu/run.sh [OPTIONS]     unpack if needed, then run check.mjs with OPTIONS
set -uo pipefail
cd "$(dirname "$0")/../.." || exit 1
work=benches/gpu/.cache
parts=$work/parts

manifest=$(ls "$parts"/p*/manifest 2>/dev/null | head -n 1)
missing=()
if [ -n "$manifest" ]; then
  count=$(awk '$1 == "parts" { print $2 }' "$manifest")
  digest=$(awk '$1 == "sha256" { print $2 }' "$manifest")
  while read -r _ file _ _; do
    [ -f "$parts/$file" ] || missing+=("${file%%/*}")
  done < <(grep '^part ' "$manifest")
  echo "parts: $((count - ${#missing[@]})) of $count here${missing[*]:+; missing: ${missing[*]}}"
fi

if [ "${1:-}" = --receive ]; then
  if command -v nvidia-smi >/dev/null; then
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 | head -n 8
  else
    echo "no nvidia-smi on PATH"
  fi
  if command -v node >/dev/null; then echo "node on PATH: $(node --version)"; else echo "no node on PATH"; fi
  exit 0
fi

if [ -n "$manifest" ] && [ ! -f "$work/unpacked-$digest" ]; then
  if [ ${#missing[@]} -gt 0 ]; then
    echo "cannot unpack: parts missing (${missing[*]}); send them again" >&2
    exit 3
  fi
  while read -r _ file sum _; do
    echo "$sum  $parts/$file" | sha256sum --check --quiet || { echo "$file is damaged; send it again" >&2; exit 3; }
  done < <(grep '^part ' "$manifest")
  if command -v xz >/dev/null; then
    decompress=(xz -dc)
  else
    decompress=(python3 -c 'import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.stdin.buffer), sys.stdout.buffer)')
  fi
  echo "unpacking $(grep -c '^part ' "$manifest") parts…"
  grep '^part ' "$manifest" | awk '{ print $2 }' | sed "s|^|$parts/|" | xargs cat | "${decompress[@]}" | tar -xf - ||
    { echo "unpacking failed" >&2; exit 3; }
  touch "$work/unpacked-$digest"
fi

node=node
if ! command -v node >/dev/null || ! node -e 'const [a, b] = process.versions.node.split(".").map(Number); process.exit(a > 20 || (a === 20 && b >= 17) ? 0 : 1)'; then
  node=$work/node/bin/node
fi
args=()
[ -d "$work/providers" ] && args=(--providers "$work/providers")
exec "$node" benches/gpu/check.mjs "${args[@]}" "$@"
