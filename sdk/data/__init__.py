"""Datasets: readers for files, record formats, and conversion into chat messages."""
