#!/bin/sh
# reproduces this run or sweep
/opt/torch/.venv/bin/python3 -m launch gpu=auto wandb.mode=disabled run_dir=/tmp/device_results/launch_auto
