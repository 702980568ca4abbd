"""Runs: what a run folder of `sdk sft` and a complete checkpoint in it are, shared by the
commands that write them (train) and those that read them (infer, export, hubs)."""
