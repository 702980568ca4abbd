"""Scoring generated replies against references: ROUGE and BLEU, and predictions files."""
