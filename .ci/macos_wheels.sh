#!/usr/bin/env bash
# Does `pip install -e ".[test,compile]"` work on a Mac (arm64, Python 3.12)? Resolve the
# dependencies for that platform (uv), then ask pip whether each resolved package has a wheel
# for it (no install). promise is a pure-Python source package (tensorflow-datasets needs it).
set -euo pipefail
cd "$(dirname "$0")/.."
out="$(mktemp -d)"
uv pip compile pyproject.toml --extra test --extra compile -c constraints.txt -q --no-header \
    --python-platform aarch64-apple-darwin --python-version 3.12 -o "$out/resolved.txt"
if grep -Ei "^(libtpu|nvidia-|jax-cuda)" "$out/resolved.txt"; then
  echo "macOS resolution wants an accelerator-only package (above)"; exit 1
fi
grep "==" "$out/resolved.txt" | grep -v "^ *#" | grep -v "^promise==" > "$out/wheels.txt"
pip install -q --dry-run --ignore-installed --no-deps --only-binary=:all: \
    --platform macosx_14_0_arm64 --python-version 3.12 --target "$out/t" -r "$out/wheels.txt"
echo "macOS arm64: $(wc -l < "$out/wheels.txt") packages resolved, each with a wheel; no libtpu or CUDA"
