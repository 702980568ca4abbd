"""Training: the SFT recipe on top of the transformers Trainer."""
