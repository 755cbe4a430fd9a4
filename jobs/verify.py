"""Cluster-job entry point: the same arguments as `fersnet verify`."""

import sys

from fersnet_ray.cli import app

if __name__ == "__main__":
    sys.exit(app(["verify", *sys.argv[1:]]))
