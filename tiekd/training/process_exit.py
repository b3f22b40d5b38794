"""How a tiekd process ends. Kept free of torch, so that `tiekd --help` and a mistyped flag answer at once
(importing torch takes about a second)."""

from __future__ import annotations

import logging
import os
import sys
import traceback
from collections.abc import Callable
from typing import NoReturn


def launched_as_rank() -> bool:
    """Whether this process is one rank of a multi-process torchrun job (from torchrun's environment)."""
    return "RANK" in os.environ and int(os.environ.get("WORLD_SIZE", "1")) > 1


def run_and_exit(command: Callable[[], int | None]) -> NoReturn:
    """Run `command` (the command line's main) and end the process with its exit code; a torchrun rank
    skips the interpreter's own shutdown.

    `tiekd.training.distributed.shutdown` destroys the process group, but references inside torch keep the group, and
    its gloo worker threads, alive until the interpreter is torn down (measured on torch 2.13: importing
    torch._dynamo after the group exists, as DDP and FSDP do, adds about ten; an FSDP run leaves one more that
    gc.collect does not free). A rank of a finished, saved run then aborted once in CI, on a loaded 2-core
    machine ("terminate called without an active exception", SIGABRT; 0 in 80 reruns here): most likely a gloo
    worker freeing a finished collective's tensors needs the GIL, which a finalizing interpreter no longer
    gives (the failure pytorch/pytorch PR 179291 describes). So a rank, whether its command returned or
    raised, prints what Python would have printed, flushes, and leaves with os._exit. Every file tiekd writes
    is closed, or atomically renamed, before the command returns or its error propagates, so nothing is lost.
    """
    if not launched_as_rank():
        sys.exit(command())
    try:
        code = command()
    except SystemExit as stop:  # argparse's --help and usage errors
        code = stop.code
    except BaseException:  # an error the command line does not turn into a message: Python's traceback
        traceback.print_exc()
        code = 1
    if code is None:
        code = 0
    elif not isinstance(code, int):  # sys.exit("message"): printed, status 1, as Python does
        print(code, file=sys.stderr)
        code = 1
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe or stream: nothing more can reach it
            pass
    os._exit(code)
