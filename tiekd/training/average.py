"""Checkpoint averaging (Vaswani et al. 2017; fairseq's average_checkpoints): the element-wise mean
of the parameters of the last N checkpoints, written as a standard model folder."""

from __future__ import annotations

from pathlib import Path

import torch

from . import checkpoint
from ..errors import TiekdError
from .. import writes


def find_last_checkpoints(run_dir: Path, last: int) -> list[Path]:
    """The newest `last` intact step checkpoints of a run folder (damaged ones are skipped)."""
    found = [folder for _, folder in checkpoint.step_checkpoints(Path(run_dir) / "checkpoints")
             if checkpoint.verify_checkpoint(folder) is None]
    if not found:
        raise TiekdError(f"{run_dir}: no intact checkpoints under checkpoints/. Fix: pass a run folder "
                         "written by `tiekd train` or `tiekd distill`")
    return found[-last:]


def average_checkpoints(folders: list[Path], out_dir: Path, overwrite: bool = False) -> Path:
    """Average the weights of model folders of one architecture into `out_dir`."""
    from safetensors.torch import load_file, save_file

    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()) and not overwrite:
        raise TiekdError(f"{out_dir}: folder exists and is not empty. Fix: choose another --out or pass --overwrite")
    total: dict[str, torch.Tensor] = {}
    for folder in folders:
        path = Path(folder) / "model.safetensors"
        if not path.is_file():
            raise TiekdError(f"{folder}: no model.safetensors. Fix: pass model or checkpoint folders")
        weights = load_file(str(path))
        if total and weights.keys() != total.keys():
            raise TiekdError(f"{folder}: its parameters differ from {folders[0]}. Fix: average checkpoints of one run")
        for name, value in weights.items():
            total[name] = total.get(name, 0) + value.double()
    averaged = {name: (value / len(folders)).to(torch.float32).contiguous() for name, value in total.items()}
    with writes.staged_folder(out_dir) as tmp:
        # the newest folder's config and tokenizer files, without its weights and trainer state
        skip = {"model.safetensors", checkpoint.STATE_FILE, checkpoint.MANIFEST}
        for source in sorted(Path(folders[-1]).iterdir()):
            if source.name not in skip and source.is_file():
                writes.copy_file(source, tmp / source.name)
        writes.call(tmp / "model.safetensors", save_file, averaged, str(tmp / "model.safetensors"),
                    metadata={"format": "pt"})
    return out_dir
