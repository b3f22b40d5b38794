"""`python -m tiekd` (and `torchrun -m tiekd`) run the CLI."""

from .cli import main
from .distributed import exit_process

exit_process(main())
