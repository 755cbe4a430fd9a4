"""Cluster-job entry point for the whole pipeline (prepare → train → synthesize → fine-tune), as `fersnet run`.

ray job submit --working-dir . -- python jobs/run.py --store s3://b/fer ...   (or: fersnet submit run ...)
"""

import sys

from fersnet_ray.cli import app

if __name__ == "__main__":
    sys.exit(app(["run", *sys.argv[1:]]))
