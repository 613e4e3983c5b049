"""Classifiers (LfF MLP, ResNet18), GCE loss, the LightningModules, checkpoints."""
