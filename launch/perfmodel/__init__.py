"""A performance model of one training step, from the config alone (no torch).

Shapes, FLOPs and the collectives each layout issues come from train/spec/ (the ranks' own
accounting). One module per part: ``hardware`` (the rates a profile implies, with the
achievable fractions and their sources), ``host`` (the cpu profile's measured kernel times),
``memory`` (bytes per rank by layout), ``compute`` (time of the FLOPs and of the memory-bound
work), ``collectives`` (alpha-beta time of one collective on NVLink, PCIe or the NIC rails,
ring or tree as NCCL would pick), ``overlap`` (what hides behind compute), ``step`` (the step
time split, tokens/s, MFU, efficiency), ``choose`` (``parallel=auto``), ``calibrate`` (a
measured run's compute fraction and busbw) and ``projection`` (``python -m launch.project``'s
record; launch/report/projected.py writes it). Nothing here measures or renders.
docs/performance-model.md states the model, its constants and predicted vs published figures.
"""
