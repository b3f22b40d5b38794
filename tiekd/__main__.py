"""`python -m tiekd` (and `torchrun -m tiekd`) run the CLI."""

from .cli import run

run()
