"""Cluster-job entry point for stage 2 (train): the same arguments as `fersnet train`.

    ray job submit --working-dir . -- python jobs/train.py --store s3://b/fer --dataset ckplus --run ck-paper \
        --preset paper --gpus-per-fold 0.25
"""

import sys

from fersnet_ray.cli import app

if __name__ == "__main__":
    sys.exit(app(["train", *sys.argv[1:]]))
