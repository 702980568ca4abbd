"""Hubs: where models are downloaded from and pushed to."""
