"""Cluster-job entry point for stage 1 (prepare): the same arguments as `fersnet prepare`.

ray job submit --working-dir . -- python jobs/prepare.py --dataset ckplus --source s3://b/ck --store s3://b/fer
"""

import sys

from fersnet_ray.cli import app

if __name__ == "__main__":
    sys.exit(app(["prepare", *sys.argv[1:]]))
