"""Cluster-job entry point: the same arguments as `fersnet export`."""

import sys

from fersnet_ray.cli import app

if __name__ == "__main__":
    sys.exit(app(["export", *sys.argv[1:]]))
