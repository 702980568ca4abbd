"""Fake hub servers for tests: local HTTP servers that speak enough of each hub's API."""
