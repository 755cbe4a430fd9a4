"""Cluster-job entry point for stage 4 (fine-tune on real + synthetic faces): the same arguments as `fersnet finetune`.

ray job submit --working-dir . -- python jobs/finetune.py --store s3://b/fer ...   (or: fersnet submit finetune ...)
"""

import sys

from fersnet_ray.cli import app

if __name__ == "__main__":
    sys.exit(app(["finetune", *sys.argv[1:]]))
