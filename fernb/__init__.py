"""fernb: datasets, backbones, losses and training loops behind the FER reproduction notebooks."""
__version__ = "0.1.0"
