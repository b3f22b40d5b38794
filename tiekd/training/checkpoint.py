"""Checkpoints that survive crashes: written whole or not at all, verified on load.

Layout of a run folder's `checkpoints/`:
    step_000500/            a standard Hugging Face model folder (weights, config, tokenizer) plus
        trainer_state.pt    optimizer, scheduler, step, data position, RNG states, run config
        MANIFEST.json       SHA-256 of every file above, written last
    best/                   the same, for the best validation score so far
A checkpoint is built in a hidden temporary folder and renamed into place only when complete, so a
kill at any moment leaves either the old set of checkpoints or the new one. On load the manifest is
checked; a damaged checkpoint is reported by name and the newest intact one is used instead.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
from pathlib import Path

import torch

from ..errors import TiekdError
from .. import writes
from ..io import sha256_file

log = logging.getLogger(__name__)

STATE_FILE = "trainer_state.pt"
MANIFEST = "MANIFEST.json"
STEP_PATTERN = re.compile(r"^step_(\d+)$")


def save_checkpoint(folder: Path, model, tokenizer, trainer_state: dict) -> Path:
    """Write `folder` whole or not at all (tiekd.writes.staged_folder): a full file system raises a
    `WriteFailed` naming the folder, the space free and needed, and the last good checkpoint; no partial
    temporary folder is left behind and the existing checkpoints are untouched."""
    folder = Path(folder)
    try:
        with writes.staged_folder(folder) as tmp:
            writes.call(tmp / "model.safetensors", model.save_pretrained, tmp)
            writes.call(tmp / "tokenizer_config.json", tokenizer.save_pretrained, tmp)
            writes.call(tmp / STATE_FILE, torch.save, trainer_state, tmp / STATE_FILE)
            files = sorted(p.name for p in tmp.iterdir() if p.is_file())
            writes.atomic_write_json(tmp / MANIFEST, {"files": {name: sha256_file(tmp / name) for name in files},
                                                      "step": trainer_state.get("step")})
    except writes.WriteFailed as error:
        good = latest_good_checkpoint(folder.parent)
        size = f" A checkpoint takes about {_folder_bytes(good) / 1e6:.1f} MB." if good is not None else ""
        raise writes.WriteFailed(
            f"{error}.{size} The last good checkpoint is {good or 'none (nothing was saved yet)'}: continue "
            "from it with --resume (--keep-last keeps fewer checkpoints)") from error.__cause__
    return folder


def _folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in Path(folder).rglob("*") if p.is_file()) if Path(folder).is_dir() else 0


def verify_checkpoint(folder: Path) -> str | None:
    """None when `folder` is an intact checkpoint, else what is wrong with it."""
    manifest_path = Path(folder) / MANIFEST
    if not manifest_path.is_file():
        return "no MANIFEST.json (the checkpoint was not finished)"
    try:
        manifest = json.loads(manifest_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        return "MANIFEST.json is damaged"
    for name, digest in manifest.get("files", {}).items():
        path = Path(folder) / name
        if not path.is_file():
            return f"{name} is missing"
        if sha256_file(path) != digest:
            return f"{name} does not match its checksum (damaged or modified)"
    return None


def step_checkpoints(checkpoint_dir: Path) -> list[tuple[int, Path]]:
    """(step, folder) of every step checkpoint, oldest first."""
    found = []
    if Path(checkpoint_dir).is_dir():
        for child in Path(checkpoint_dir).iterdir():
            match = STEP_PATTERN.match(child.name)
            if match and child.is_dir():
                found.append((int(match.group(1)), child))
    return sorted(found)


def latest_good_checkpoint(checkpoint_dir: Path) -> Path | None:
    """The newest intact step checkpoint; damaged newer ones are reported and skipped."""
    for step, folder in reversed(step_checkpoints(checkpoint_dir)):
        problem = verify_checkpoint(folder)
        if problem is None:
            return folder
        log.warning("checkpoint %s is damaged (%s); falling back to an older one", folder, problem)
    return None


def load_trainer_state(folder: Path) -> dict:
    problem = verify_checkpoint(folder)
    if problem is not None:
        raise TiekdError(f"{folder}: damaged checkpoint: {problem}. Fix: resume from an older checkpoint "
                         f"(delete this folder and rerun with --resume)")
    return torch.load(Path(folder) / STATE_FILE, map_location="cpu", weights_only=False)


def prune_step_checkpoints(checkpoint_dir: Path, keep_last: int) -> None:
    """Delete all but the newest `keep_last` step checkpoints."""
    for _, folder in step_checkpoints(checkpoint_dir)[:-keep_last] if keep_last > 0 else []:
        shutil.rmtree(folder, ignore_errors=True)
