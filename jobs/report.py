"""Cluster-job entry point: write a run's results report (same arguments as `fersnet report`).

ray job submit --working-dir . -- python jobs/report.py --store s3://b/fer ...   (or: fersnet submit report ...)
"""

import sys

from fersnet_ray.cli import app

if __name__ == "__main__":
    sys.exit(app(["report", *sys.argv[1:]]))
