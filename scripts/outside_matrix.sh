#!/usr/bin/env bash
# Issue 25's done-when matrix: outside models trained by scripts/outside_models.py, defended by `make defend`
# with no tuning flags, one line per run in $OUT/table.tsv (docs/defend.md "Results on outside models").
#   (names M_* so that they do not reach make as its own SEEDS etc.)
#   OUT=/tmp/outside M_ARCHS="resnet18 mobilenet_v2" M_TRIGGERS="badnets blended" M_FRACTIONS="0.36 1" M_SEEDS="0 1 2" \
#   PROFILE=demo scripts/outside_matrix.sh
# Seed s trains its own model (outside_models.py --seed s) and defends it with seed=s; M_MODEL_SEED=0 defends
# one model (seed 0) with every seed instead (the CIFAR-stem ResNet-18 costs ~15x to train). A run whose report
# exists is skipped, so a stopped matrix resumes.
set -euo pipefail
OUT=${OUT:-artifacts/outside}
M_ARCHS=${M_ARCHS:-"resnet18 cifar_resnet18 mobilenet_v2"}
M_TRIGGERS=${M_TRIGGERS:-"badnets blended"}
M_FRACTIONS=${M_FRACTIONS:-"0.36 1"}
M_SEEDS=${M_SEEDS:-"0 1 2"}
M_MODEL_SEED=${M_MODEL_SEED:-}
PROFILE=${PROFILE:-paper}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
PY=${PY:-.venv/bin/python}
mkdir -p "$OUT/defend"
for arch in $M_ARCHS; do
  for trig in $M_TRIGGERS; do
    for seed in $M_SEEDS; do
      ms=${M_MODEL_SEED:-$seed}
      model="$OUT/$arch-$trig-s$ms.pt"
      [ -f "$model" ] || $PY scripts/outside_models.py --arch "$arch" --trigger "$trig" --seed "$ms" --out "$model"
      for frac in $M_FRACTIONS; do
        dir="$OUT/defend/$PROFILE-$arch-$trig-f$frac-s$seed"
        [ -f "$dir/sft.report.json" ] && continue  # done in an earlier call: its row is in table.tsv
        make --no-print-directory defend MODEL="$model" DATA=digits DEFENSE=sft TRIGGER="$trig" \
          FRACTION="$frac" PROFILE="$PROFILE" SET="seed=$seed" OUT="$dir" \
          DEFEND_ARGS="--arch $arch" \
          > "$dir.log" 2>&1 || { echo "$arch $trig $frac $seed failed: $(tail -1 "$dir.log")"; continue; }
        $PY - "$model" "$dir/sft.report.json" "$PROFILE" "$arch" "$trig" "$frac" "$seed" >> "$OUT/table.tsv" <<'EOF'
import json, sys
ref = json.load(open(sys.argv[1].replace(".pt", ".json")))
r = json.load(open(sys.argv[2]))
b, a = r["before"], r["after"]
ok = a["asr"] <= 0.05 and a["ca"] >= ref["ca"] - 0.03
print("\t".join(map(str, [*sys.argv[3:8], ref["seed"], r["clean_images"], r["sft"]["lr_max1"], f"{ref['ca']:.3f}",
                          f"{ref['asr']:.3f}", f"{a['ca']:.3f}", f"{a['asr']:.3f}", "yes" if ok else "NO",
                          " | ".join(r["warnings"])])))
EOF
      done
    done
  done
done
cat "$OUT/table.tsv"
