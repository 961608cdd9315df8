"""``python -m launch.mamf``: the maximum achievable matmul TFLOP/s of this device, per precision
(launch/bench/matmul_ceiling.py); runs then report MFU against it as well as against the
datasheet. ``--host-shapes CONFIG_YAML``: a CPU run's own kernel shapes instead
(launch/bench/host_kernels.py)."""

from launch.bench.matmul_ceiling import main

if __name__ == "__main__":
    raise SystemExit(main())
