"""Submit a stage to a Ray cluster from a machine with this checkout: the same arguments as `fersnet submit`.

python jobs/submit.py --address http://head:8265 train --store s3://b/fer --dataset ckplus --run ck-paper
"""

import sys

from fersnet_ray.cli import app

if __name__ == "__main__":
    sys.exit(app(["submit", *sys.argv[1:]]))
