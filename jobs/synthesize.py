"""Cluster-job entry point: the same arguments as `fersnet synthesize`."""

import sys

from fersnet_ray.cli import app

if __name__ == "__main__":
    sys.exit(app(["synthesize", *sys.argv[1:]]))
