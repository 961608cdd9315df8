#!/bin/sh
# reproduces this run or sweep
/opt/torch/.venv/bin/python3 -m launch gpu=auto model=gpt_1_3b sweep=none precision=bf16 cluster.nproc_per_node=1 train.seq_len=2048 train.micro_batch=4 train.global_batch=8 train.steps=12 train.warmup_steps=4 profile.enabled=true profile.steps=2 wandb.mode=disabled run_dir=/tmp/device_results/gpt_1_3b
