"""Run folders: refuse to mix runs, and let `--resume` pick up exactly the saved configuration."""

from __future__ import annotations

import shutil
from pathlib import Path

import yaml

from ..config import RunConfig
from ..errors import TiekdError

# keys a resumed run may change: extending a run is allowed, changing what it trains is not (the teacher cache
# changes where the teacher's logits come from, not their values). `out` is the
# folder being resumed, however it is spelled (relative, absolute, trailing slash) or wherever it was moved
RESUMABLE_CHANGES = {"out", "max_updates", "max_epochs", "device", "valid_every", "save_every", "log_every", "compile",
                     "fsdp", "teacher_cache"}


PATH_KEYS = ("data", "teacher", "model")


def _same_setting(key: str, now, before) -> bool:
    """Equal values; for paths, the same folder however it is spelled (relative, absolute, ./)."""
    if now == before:
        return True
    if key in PATH_KEYS and now and before and Path(now).exists():
        return Path(now).resolve() == Path(before).resolve()
    return False


def prepare_run_folder(config: RunConfig, resume: bool, overwrite: bool) -> RunConfig:
    """Create or check `config.out`; returns the configuration the run must use."""
    out = Path(config.out)
    saved_path = out / "config.yaml"
    if resume:
        if not saved_path.is_file():
            raise TiekdError(f"{out}: nothing to resume (no config.yaml). Fix: drop --resume to start a new run")
        saved = RunConfig.from_dict(yaml.safe_load(saved_path.read_text()), source=str(saved_path))
        now, before = config.to_dict(), saved.to_dict()
        differs = [k for k in now if k not in RESUMABLE_CHANGES and not _same_setting(k, now[k], before[k])]
        if differs:
            raise TiekdError(
                f"{out}: --resume with a different configuration ({', '.join(differs)}). Fix: resume with the "
                f"saved settings (see {saved_path}), or start a new run in another folder")
        return config
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            what = "a different run" if saved_path.is_file() else "other files"
            raise TiekdError(f"{out}: the output folder already holds {what}. Fix: choose a new --out, "
                             "continue it with --resume, or pass --overwrite to replace it")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    config.save(saved_path)
    return config
