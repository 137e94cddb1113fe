#!/usr/bin/env bash
# Seeds a fuzz target's corpus from the repository: every device mapping (load_template) or
# every payload (normalize, with a selector byte in front) of templates/ and conformance/.
set -euo pipefail
target=$1 corpus=$2
root="$(dirname "$0")/.."
n=0
case "$target" in
  load_template)
    while IFS= read -r f; do
      grep -q '"templateType"' "$f" || continue
      cp "$f" "$corpus/seed-$n.json"; n=$((n+1))
    done < <(find "$root/templates" "$root/conformance" -name '*.json')
    ;;
  normalize)
    while IFS= read -r f; do
      grep -q '"templateType"' "$f" && continue
      for sel in 0 1 2 3 4 128 129; do
        { printf "\\x$(printf %02x $sel)"; cat "$f"; } > "$corpus/seed-$n.bin"; n=$((n+1))
      done
    done < <(find "$root/conformance" -name '*.json' -size -16k)
    ;;
  *) ;;
esac
echo "seeded $n inputs into $corpus"
