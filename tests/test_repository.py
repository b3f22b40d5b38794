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


def test_no_tracked_file_names_a_folder_of_our_machines():
    """Scripts take paths as arguments and records name folders relatively (`<runs>/...`, `../shared/...`):
    a stranger's clone must not depend on, or show, where our experiments ran."""
    machine_root = "/" + "work" + "/"  # split so that this file does not match itself
    named = []
    for path in tracked_files():
        try:
            text = (ROOT / path).read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        if machine_root in text:
            named.append(path)
    assert named == [], f"tracked files naming {machine_root}...: {named[:10]} (write <runs>/, ../shared/ or take an argument)"


def test_no_class_is_over_250_lines():
    """Small parts: a class that grows past 250 lines is split by concern (the experiment's Pipeline keeps the
    book-keeping, tiekd/experiment/stages.py the work of each stage)."""
    import ast

    long = []
    for path in sorted((ROOT / "tiekd").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ClassDef) and node.end_lineno - node.lineno + 1 > 250:
                long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({node.end_lineno - node.lineno + 1} lines)")
    assert long == []
