"""Diffusion core: an in-pipeline DDPM, DDIM inversion, the h-space hook, and the injection sampler."""
