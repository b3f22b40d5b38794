"""`python -m tiekd` (and `torchrun -m tiekd`) run the CLI."""

import sys

from .cli import main

sys.exit(main())
