"""Shared fixtures: real Multi30k slices, a prepared-data folder and a tiny trained teacher.

The data comes from ../shared/data/multi30k (or $TIEKD_MULTI30K_DIR); every model here is tiny so the
whole suite runs in minutes on two CPU cores.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from types import ModuleType

import pytest
import torch

def _torch_threads() -> int:
    """OMP_NUM_THREADS when set, else up to 2. On cores that other work keeps busy, a second thread per
    op mostly waits for the first (tiny models here: measured 5x slower with 2 threads than with 1 on 2
    busy cores), so `OMP_NUM_THREADS=1 pytest` must not be overridden."""
    try:
        return max(1, int(os.environ["OMP_NUM_THREADS"]))
    except (KeyError, ValueError):
        return max(1, min(2, os.cpu_count() or 1))


torch.set_num_threads(_torch_threads())


def pytest_configure(config):
    """One thread in each pytest-xdist worker (`pytest -n 2`) unless OMP_NUM_THREADS says otherwise, for
    torch here and for what the worker starts or loads later (CTranslate2, subprocesses). The README's
    command sets OMP_NUM_THREADS=1 itself: on a slow 2-core machine `pytest -n 2` took 459 s with it
    and 859 s with torch alone held to one thread (2026-12-04)."""
    if hasattr(config, "workerinput") and "OMP_NUM_THREADS" not in os.environ:
        os.environ["OMP_NUM_THREADS"] = "1"
        torch.set_num_threads(1)


def load_benchmark_script(name: str) -> ModuleType:
    """A script of benchmarks/ (not a package) imported as a module, for its tests."""
    path = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def multi30k_dir() -> Path:
    env = os.environ.get("TIEKD_MULTI30K_DIR")
    candidates = [Path(env)] if env else []
    candidates.append(Path(__file__).resolve().parents[2] / "shared" / "data" / "multi30k")
    for candidate in candidates:
        if (candidate / "train.de").is_file():
            return candidate
    pytest.fail(f"Multi30k not found in {candidates}; set TIEKD_MULTI30K_DIR")


def head(path: Path, n: int, skip: int = 0) -> list[str]:
    with open(path, encoding="utf-8") as handle:
        lines = handle.read().split("\n")
    return lines[skip:skip + n]


@pytest.fixture(scope="session")
def multi30k() -> Path:
    return multi30k_dir()


@pytest.fixture(scope="session")
def prepared(tmp_path_factory, multi30k) -> Path:
    """2,000 real training pairs, 100 validation pairs, a 1,000-piece joint tokenizer."""
    from tiekd.data.prepare import prepare_data

    root = tmp_path_factory.mktemp("slice")
    for split, n in (("train", 2000), ("val", 100)):
        for lang in ("de", "en"):
            (root / f"{split}.{lang}").write_text("\n".join(head(multi30k / f"{split}.{lang}", n)) + "\n", encoding="utf-8")
    out = root / "prepared"
    prepare_data(out, train=(root / "train.de", root / "train.en"), valid=(root / "val.de", root / "val.en"),
                 vocab_size=1000, verbose=False)
    return out


def small_config(prepared: Path, out: Path, **overrides):
    """A run that takes seconds: tiny model, small batches, no dropout noise unless asked."""
    from tiekd.config import RunConfig

    values = dict(data=str(prepared), out=str(out), model="micro", max_tokens=1024, max_updates=20,
                  warmup_updates=10, lr=3e-3, valid_every=10, log_every=1, valid_max_sentences=20,
                  deterministic=True, seed=7)
    values.update(overrides)
    return RunConfig(**values)


@pytest.fixture(scope="session")
def teacher_dir(tmp_path_factory, prepared) -> Path:
    """A tiny teacher trained for a few hundred updates on the slice (its best checkpoint folder)."""
    from tiekd.training.trainer import run_training

    out = tmp_path_factory.mktemp("teacher") / "run"
    config = small_config(prepared, out, model="tiny", dropout=0.0, max_updates=150, valid_every=150,
                          log_every=50, max_tokens=2048, lr=3e-3, warmup_updates=30, valid_bleu=False)
    run_training(config, quiet=True)
    return out / "checkpoints" / "best"
