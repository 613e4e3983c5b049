"""Data sources, LfF colouring, the DisEnt on-disk layout, the manifest, and validation."""
