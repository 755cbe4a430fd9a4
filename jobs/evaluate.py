"""Cluster-job entry point: collect a run's per-fold test accuracy (same arguments as `fersnet evaluate`)."""

import sys

from fersnet_ray.cli import app

if __name__ == "__main__":
    sys.exit(app(["evaluate", *sys.argv[1:]]))
