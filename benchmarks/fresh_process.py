"""Run one measurement of a benchmark in a fresh Python process and read its result back.

Why a fresh process: thread pools (PyTorch's OpenMP threads, CTranslate2's), allocator caches and the
peak resident memory (VmHWM) all carry over from one measurement to the next inside a process, so a
measurement taken after another would be a measurement of both. Each benchmark script doubles as the
child: started with its own arguments plus one internal flag, it measures one case and prints its
result as JSON on its last line of output.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path


def peak_rss_mb() -> float:
    """This process's peak resident memory in MB (VmHWM in /proc/self/status; Linux only)."""
    status = Path("/proc/self/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM:"))) / 1024


def measure_in_fresh_process(script: str, arguments: list[str], what: str, env: dict | None = None) -> dict:
    """Run `python script *arguments` and return the JSON object on the last line of its output; a
    failed child stops the benchmark with its error output, naming `what` was being measured."""
    done = subprocess.run([sys.executable, str(Path(script).resolve()), *arguments], env=env,
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"measuring {what} failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    lines = done.stdout.strip().splitlines()
    if not lines:
        raise SystemExit(f"measuring {what} printed no result:\n{done.stderr[-3000:]}")
    return json.loads(lines[-1])
