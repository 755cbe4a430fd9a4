"""fersnet-ray: distributed, balanced data augmentation for facial expression recognition (FERSNet).

Importing the package does nothing; the stages live in their subpackages and the CLI in `cli`.
"""

__version__ = "0.1.0"
