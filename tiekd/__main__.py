"""`python -m tiekd` (and `torchrun -m tiekd`) run the CLI."""

from .cli import main
from .distributed import run_and_exit

run_and_exit(main)
