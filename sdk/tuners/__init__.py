"""Tuners: how a model is made trainable and rebuilt from a checkpoint."""
