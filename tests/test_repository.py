"""What the repository itself must never hold."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def tracked_files() -> list[str]:
    try:
        done = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    return done.stdout.splitlines()


def test_no_training_checkpoint_is_tracked():
    """Checkpoints stay in run folders (released models, such as the converged teacher, are model
    folders, not checkpoints); the history already carries 500 MB of them."""
    checkpoints = [path for path in tracked_files() if re.search(r"(^|/)checkpoints/(step_\d+|best)(/|$)", path)]
    assert checkpoints == [], f"tracked checkpoints (remove them and keep them outside git): {checkpoints[:5]}"
