#!/usr/bin/env bash
# Here (with network to PyPI): fetch the wheels the GPU image lacks into .whl/ (git-ignored),
# for Python 3.12 on x86-64, so they travel with the working tree to a device machine.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .whl bench_local
cp ../shared/bench/plain_gpt_anchor.py bench_local/
platforms=(--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64
           --platform manylinux2014_x86_64)
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp "${platforms[@]}" -d .whl \
    hydra-core==1.3.2 omegaconf==2.3.0 torchao==0.18.0
# antlr4-python3-runtime (Hydra's parser) ships as an sdist only: build its pure-Python wheel.
python3 -m pip wheel -q --no-deps -w .whl antlr4-python3-runtime==4.9.3
ls -la .whl
