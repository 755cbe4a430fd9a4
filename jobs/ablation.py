"""Cluster-job entry point for the ablation study: the same arguments as `fersnet ablation`.

ray job submit --working-dir . -- python jobs/ablation.py --store s3://b/fer ...   (or: fersnet submit ablation ...)
"""

import sys

from fersnet_ray.cli import app

if __name__ == "__main__":
    sys.exit(app(["ablation", *sys.argv[1:]]))
