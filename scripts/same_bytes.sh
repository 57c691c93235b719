#!/usr/bin/env bash
# Does a change keep every written byte? Runs one sample at BASE (a commit) and at the working tree,
# with the same .venv, and compares the written images (sha256) and manifests (timings aside).
#   scripts/same_bytes.sh BASE_REV        (about 3-5 minutes on 2 cores; needs ../shared/data/lfw)
# The sample: 3 LFW photos, the packaged 4-face team photo and a corrupt file through
# `tipim protect` (balanced preset, 5 steps, no self-check), and the same faces' aligned crops
# through configs/protect.yaml + configs/method/tipim.yaml (5 steps). Against a commit before
# 2c7bc87 the manifests differ in eps / eps_levels (that commit renamed the key), and only there.
set -euo pipefail
cd "$(dirname "$0")/.."
BASE=${1:?usage: scripts/same_bytes.sh BASE_REV}
PY=$PWD/.venv/bin/python
LFW=${LFW:-$PWD/../shared/data/lfw}
W=$(mktemp -d)
trap 'git worktree remove --force "$W/base" >/dev/null 2>&1 || true; rm -rf "$W"' EXIT
git worktree add -q --detach "$W/base" "$BASE"
mkdir -p "$W/in"
cp "$LFW/Aaron_Peirsol/Aaron_Peirsol_0001.jpg" "$LFW/Aaron_Peirsol/Aaron_Peirsol_0002.jpg" "$LFW/Zico/Zico_0001.jpg" "$W/in/"
cp "$($PY -c "from tipim.zoo.registry import artifact_path; print(artifact_path('demo-gdp'))")" "$W/in/team.jpg"
printf 'broken\n' > "$W/in/broken.jpg"
TARGETS=$($PY -c "from tipim.demo import default_targets; print(default_targets())")
PYTHONPATH="$W/base/src" $PY -m tipim.cli data align --src "$W/in" --out "$W/aligned" > "$W/align.log" 2>&1

run() {  # run SRC OUT: the sample with the code of SRC
  mkdir -p "$2"
  rc=0; PYTHONPATH="$1/src" $PY -m tipim.cli protect "$W/in" --out "$2/photos" --model.steps 5 --check none > "$2/photos.log" 2>&1 || rc=$?
  [ "$rc" = 1 ] || { echo "the photo run at $1 should exit 1 (the corrupt file), not $rc: $2/photos.log" >&2; exit 1; }
  PYTHONPATH="$1/src" $PY -m tipim.cli protect --config "$1/configs/protect.yaml" --config "$1/configs/method/tipim.yaml" \
    --model.steps 5 --data.faces "$W/aligned/alignment.jsonl" --data.targets "$TARGETS" --data.output_dir "$2/crops" \
    --trainer.accelerator cpu > "$2/crops.log" 2>&1
  (cd "$2" && find . -type f \( -name '*.png' -o -name '*.jpg' \) | sort | xargs -r sha256sum)
}
run "$W/base" "$W/out_base" > "$W/base.sums"
run "$PWD" "$W/out_head" > "$W/head.sums"
echo "written images: $(wc -l < "$W/head.sums") at the working tree, $(wc -l < "$W/base.sums") at $BASE"
[ -s "$W/head.sums" ] || { echo "no image written: see the logs"; exit 1; }
diff "$W/base.sums" "$W/head.sums" && echo "images: the same bytes" || { echo "images: DIFFERENT"; exit 1; }
sha256sum "$W/head.sums" | cut -c1-16 | sed 's/^/digest of the image sums: /'
$PY - "$W/out_base" "$W/out_head" <<'EOF'
import json, sys
from pathlib import Path

def lines(run):  # every manifest line, timings and run-folder paths aside
    def clean(o):
        if isinstance(o, dict):
            return {k: clean(v) for k, v in o.items() if "second" not in k and "time" not in k}
        return [clean(v) for v in o] if isinstance(o, list) else o
    return {kind: [clean(json.loads(x)) for x in (Path(run) / kind / "manifest.jsonl").read_text().splitlines()]
            for kind in ("photos", "crops")}

base, head = lines(sys.argv[1]), lines(sys.argv[2])
for kind in base:
    diff = sorted({k for a, b in zip(base[kind], head[kind]) for k in a.keys() | b.keys() if a.get(k) != b.get(k)})
    diff += ["number of lines"] if len(base[kind]) != len(head[kind]) else []
    print(f"{kind} manifest:", "the same" if not diff else f"DIFFERENT in {', '.join(diff)}")
sys.exit(0 if base == head else 1)
EOF
