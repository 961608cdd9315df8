"""One rank: ``python -m train --config RUN_DIR/config.yaml`` (torchrun starts N of these)."""

from __future__ import annotations

import argparse

from torch.distributed.elastic.multiprocessing.errors import record

from train.runtime.rank_exit import run_or_exit
from train.runtime.worker import run


# A rank's uncaught exception goes to torchrun's error file too (TORCHELASTIC_ERROR_FILE, in
# the run's torchelastic folder): torchrun's failure summary then names it, not a link.
@record
def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m train", description=__doc__)
    parser.add_argument(
        "--config", required=True, help="resolved config.yaml written by the driver"
    )
    args = parser.parse_args()
    run_or_exit(lambda: run(args.config))


if __name__ == "__main__":
    main()
