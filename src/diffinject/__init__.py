"""diffinject: debias image classifiers with diffusion h-space style injection (DiffInject)."""

__version__ = "0.1.0"
