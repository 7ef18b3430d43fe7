#!/usr/bin/env bash
# Fetch, where pip reaches a package index, the wheels that scripts/train_gpu.sh needs on a GPU
# machine that has PyTorch, numpy, scipy, scikit-image, safetensors, tqdm, matplotlib and
# imageio but no index: the simulator's own dependencies, for CPython 3.12 on x86-64 Linux.
# They land in .whl (ignored by git through .git/info/exclude); carry it with the run.
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
PY=${PY:-python3}
for spec in gymnasium==1.4.0 farama-notifications==0.0.4 cloudpickle==3.1.2 miniworld==2.1.0 pyglet==1.5.31 \
    transforms3d==0.4.2 pytorch-msssim==1.0.0; do
  $PY -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --platform any -d .whl "$spec"
done
# MiniWorld's wheel (39 MB) ships 6 MB of portrait textures that no env of ours uses (none names
# them); dropping them keeps the tree plus wheels under the 64 MiB a GPU call may carry.
$PY - <<'PY'
import glob, os, zipfile
for path in glob.glob(".whl/miniworld-*.whl"):
    tmp = path + ".tmp"
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as dst:
        for item in src.infolist():
            if "/textures/portraits/" in item.filename:
                continue
            data = src.read(item.filename)
            if item.filename.endswith(".dist-info/RECORD"):
                data = b"".join(l for l in data.splitlines(keepends=True) if b"/textures/portraits/" not in l)
            dst.writestr(item, data)
    os.replace(tmp, path)
PY
du -ch .whl/*.whl | tail -1
