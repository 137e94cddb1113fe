#!/usr/bin/env bash
# Seeds a fuzz target's corpus from the repository:
#   load_template  every device mapping of templates/ and conformance/ (files, and the inline
#                  templates of conformance/iomt-fhir/cases.json); a mapping larger than MAX_LEN
#                  (default 8192, as fuzz/run) as one seed per template of its collection
#   normalize      every payload of conformance/, with a selector byte in front
#   fhir_mapping   every FHIR mapping (CollectionFhir, CodeValueFhir) of templates/ and
#                  conformance/, split as above
#   config         config/*.toml, variants of config/example.toml for each auth and source kind
#                  (its commented blocks), and the configs the code writes (`iomt demo`,
#                  `iomt bench`, the tests and testkit/) with their placeholders filled in
# Needs python3 for the inline templates and the config variants (skipped without it).
set -euo pipefail
target=$1 corpus=$2
root="$(cd "$(dirname "$0")/.." && pwd)"
n=0
fhir_type='"templateType"[[:space:]]*:[[:space:]]*"(CollectionFhir|CodeValueFhir)'
have_python() { command -v python3 >/dev/null; }
# Copies a template file into the corpus; one larger than MAX_LEN (which libFuzzer would cut)
# goes in as one seed per entry of its collection, each in a collection of its own.
add_template() {
  local f=$1 size
  size=$(wc -c < "$f")
  if [ "$size" -gt "${MAX_LEN:-8192}" ] && have_python; then
    n=$((n + $(python3 - "$f" "$corpus/seed-$n" <<'EOF'
import json, sys
path, prefix = sys.argv[1], sys.argv[2]
root = json.load(open(path))
items = root.get("template") if isinstance(root, dict) else None
if not isinstance(items, list):
    items, root = [root], None
for i, item in enumerate(items):
    doc = dict(root, template=[item]) if root is not None else item
    open(f"{prefix}-{i}.json", "w").write(json.dumps(doc, indent=2))
print(len(items))
EOF
)))
  else
    cp "$f" "$corpus/seed-$n.json"; n=$((n+1))
  fi
}
case "$target" in
  load_template)
    while IFS= read -r f; do
      grep -q '"templateType"' "$f" || continue
      grep -qiE "$fhir_type" "$f" && continue
      head -c 64 "$f" | grep -q '^[[:space:]]*\[' && continue  # a case list (cases.json)
      add_template "$f"
    done < <(find "$root/templates" "$root/conformance" -name '*.json' | sort)
    if have_python; then
      n=$((n + $(python3 - "$root/conformance/iomt-fhir/cases.json" "$corpus" <<'EOF'
import json, sys
cases, corpus = sys.argv[1], sys.argv[2]
n = 0
for c in json.load(open(cases)):
    t = c.get("device_template")
    if isinstance(t, dict):
        open(f"{corpus}/seed-case-{n}.json", "w").write(json.dumps(t, indent=2))
        n += 1
print(n)
EOF
)))
    fi
    ;;
  normalize)
    while IFS= read -r f; do
      grep -q '"templateType"' "$f" && continue
      for sel in 0 1 2 3 4 128 129; do
        { printf "\\x$(printf %02x $sel)"; cat "$f"; } > "$corpus/seed-$n.bin"; n=$((n+1))
      done
    done < <(find "$root/conformance" -name '*.json' -size -16k | sort)
    ;;
  fhir_mapping)
    while IFS= read -r f; do
      grep -qiE "$fhir_type" "$f" || continue
      add_template "$f"
    done < <(find "$root/templates" "$root/conformance" -name '*.json' | sort)
    ;;
  config)
    for f in "$root"/config/*.toml; do
      cp "$f" "$corpus/seed-$n.toml"; n=$((n+1))
    done
    if have_python; then
      n=$((n + $(python3 - "$root" "$corpus" <<'EOF'
import glob, re, sys
root, corpus = sys.argv[1], sys.argv[2]
out = []
example = open(f"{root}/config/example.toml").read()

def section(text, name):
    """The lines of `[name]` up to the next table header (commented or not)."""
    m = re.search(rf"^\[{re.escape(name)}\]\n(.*?)(?=^#? ?\[|\Z)", text, re.S | re.M)
    return m

# Auth kinds: the commented alternatives of [fhir.auth].
auth = section(example, "fhir.auth")
if auth:
    body = auth.group(1)
    bearer = "kind = \"bearer\"\ntoken_env = \"PATH\"\n"
    cc = "\n".join(l[2:] for l in body.splitlines()
                   if l.startswith("# ") and l[2:].split(" ")[0] in
                   ("token_url", "client_id", "client_secret_env", "scope", "resource"))
    cc = "kind = \"client_credentials\"\n" + re.sub(r"\s+#.*", "", cc) + "\n"
    for b in (bearer, cc):
        out.append(example[:auth.start(1)] + b + "\n" + example[auth.end(1):])

# Event Hubs: the commented [source] block, uncommented once, instead of the MQTT one.
mqtt = section(example, "source")
m = re.search(r"^# \[source\]\n((?:#.*\n)+)", example, re.M)
if mqtt and m:
    lines = [l[2:] if l.startswith("# ") else l for l in m.group(1).splitlines()]
    block = "\n".join(lines)
    head, _, creds = block.partition("# [source.credential]")
    parts = creds.split("# [source.credential]")
    bases = [head]
    for p in parts:
        table = "\n".join(l[2:] for l in p.splitlines() if l.startswith("# ") and "=" in l)
        bases.append(head.replace('connection_string_env = ', '# connection_string_env = ')
                     .replace('# fully_qualified_namespace', 'fully_qualified_namespace')
                     + "\n[source.credential]\n" + table + "\n")
    rest = example[mqtt.end():]
    rest = rest[rest.index("[pipeline]"):] if "[pipeline]" in rest else rest
    for b in bases:
        out.append(example[:mqtt.start()] + "[source]\n" + b + "\n" + rest)

# Configs the code writes: raw strings holding a [templates] table, placeholders filled.
for path in sorted(p for d in ("src", "tests", "testkit")
                   for p in glob.glob(f"{root}/{d}/**/*.rs", recursive=True)):
    for lit in re.findall(r'r#"(.*?)"#', open(path).read(), re.S):
        if "[templates]" not in lit:
            continue
        text = re.sub(r"^\{[a-z_]+\}$", "", lit, flags=re.M)
        text = re.sub(r"(?<!\{)\{[a-z_]+\}(?!\})", "1", text)
        out.append(text.replace("{{", "{").replace("}}", "}"))

for i, text in enumerate(out):
    open(f"{corpus}/seed-gen-{i}.toml", "w").write(text)
print(len(out))
EOF
)))
    fi
    ;;
  *) echo "unknown target $target" >&2; exit 2 ;;
esac
echo "seeded $n inputs into $corpus"
