"""Cluster-job entry point: the same arguments as `fersnet predict`."""

import sys

from fersnet_ray.cli import app

if __name__ == "__main__":
    sys.exit(app(["predict", *sys.argv[1:]]))
