"""``python -m sdk``: the ``sdk`` command (how torchrun starts it in each process)."""

from sdk.cli import main

main()
