#!/usr/bin/env bash
# The main job (README): build, export GroupMamba-Base to ONNX and run it on CPU through tract on
# a random input. With CHECKPOINT=/path/to/groupmamba_base_ema.pth it exports those weights;
# without, it uses seeded random weights and says so.
set -euo pipefail
cd "$(dirname "$0")/.."
VARIANT=${VARIANT:-base}
out=out
mkdir -p "$out"

python3 -m pip install -q --disable-pip-version-check "numpy>=1.26"
cargo build --release -p gm-converter -p gm-runtime

ckpt=()
if [ -n "${CHECKPOINT:-}" ]; then ckpt=(--checkpoint "$CHECKPOINT"); fi
target/release/gm-export --variant "$VARIANT" "${ckpt[@]}" --out "$out/groupmamba_$VARIANT.onnx"

python3 -c "import numpy as np; np.save('$out/random_input.npy', np.random.default_rng(0).standard_normal((1, 3, 224, 224), dtype=np.float32))"
target/release/gm-run --model "$out/groupmamba_$VARIANT.onnx" --input "$out/random_input.npy" \
  --output "$out/logits.npy" --backend tract
python3 -c "
import numpy as np
l = np.load('$out/logits.npy')
print('logits', l.shape, 'top-5 classes', np.argsort(-l[0])[:5].tolist())"
