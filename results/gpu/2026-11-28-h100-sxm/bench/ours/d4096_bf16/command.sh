#!/bin/sh
# reproduces this run or sweep
/opt/torch/.venv/bin/python3 -m launch sweep=none cluster.nproc_per_node=1 gpu=auto model=d4096_l4 precision=bf16 train.compile=true train.seq_len=2048 train.micro_batch=8 train.global_batch=8 train.steps=13 train.warmup_steps=3 wandb.mode=disabled run_dir=/tmp/device_results/bench/ours/d4096_bf16 overwrite=true
