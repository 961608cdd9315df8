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
# Holistic Trace Analysis (summary.json breakdown.hta) and what it imports, and pytest for the
# GPU tests: bench/device_check.sh installs each only where the image lacks it (~35 MB).
mkdir -p .whl/extra
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp "${platforms[@]}" -d .whl/extra \
    holistictraceanalysis==0.5.0 pandas==2.2.3 plotly==5.24.1 networkx==3.4.2 psutil==6.1.1 \
    pytz==2024.2 tzdata==2024.2 python-dateutil==2.9.0.post0 six==1.17.0 tenacity==9.0.0 \
    pytest==8.3.4 pluggy==1.5.0 iniconfig==2.0.0
ls -la .whl .whl/extra
