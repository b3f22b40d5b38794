"""One write discipline for every file and folder tiekd produces.

Every output is built under a temporary name beside its target and renamed into place only when
complete, so a crash, a kill or a full disk at any moment leaves either the old output or the new one,
never a half-written file under a final name:

    atomic_write_bytes/text/json(path, ...)   a file: temporary sibling, fsync, rename
    staged_folder(target)                     a folder: filled in a temporary sibling, then renamed
    call(path, writer, *args)                 a library's own writer (torch.save, safetensors,
                                              save_pretrained, SentencePiece, CTranslate2's converter)
                                              run inside a staged folder
    append_line(path, line)                   an append-only log (metrics.jsonl); readers drop a torn
                                              last line

Failures. A write that fails for lack of space or an I/O error (ENOSPC, EDQUOT, EIO, EFBIG, EROFS, and
the RuntimeErrors that torch.save, safetensors and the converters raise for them) removes its partial
output and raises one `WriteFailed`: the path, the space free there, the space needed where known, and
the fix. Any other error passes through unchanged, after the same cleanup.

Leftovers. Temporary names carry their owner's machine and process id: `.<name>.<role>-<host>-<pid>-<8 hex>`.
Workers of one experiment and torchrun ranks share folders, perhaps across machines, so a writer
removes, in the folder it writes to, only the temporaries of its own machine whose owner has ended (or, for its own id, that it no longer writes: a call killed
in-process by the test harness below). A SIGKILL therefore leaves at most one temporary per output,
removed by the next run that writes there.

Fault injection. `inject_fault(at=N, kind=...)` makes the N-th write boundary (`write_point`) fail with
ENOSPC or stand for a SIGKILL (`ProcessKilled`, after which no cleanup runs, as after a real kill);
`at=0` only counts the boundaries. tests/test_write_faults.py drives every command through it.
C++ and Rust writers are covered whole (a boundary before each call); the real full disk of
benchmarks/full_disk.sh covers what they do inside.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import re
import secrets
import socket
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from .errors import TiekdError

log = logging.getLogger(__name__)

# errno values that mean the storage, not the program, failed
STORAGE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EFBIG, errno.EROFS}
# how libraries that hide errno report the same failures (torch.save's C++ stream, safetensors' Rust
# io::Error, CTranslate2's C++ writer)
_STORAGE_MESSAGE = re.compile(r"iostream error|No space left|StorageFull|code: 28\b|Disk quota|Input/output error|"
                              r"file write failed|unexpected pos|PytorchStreamWriter failed|Read-only file system",
                              re.IGNORECASE)
_TEMPORARY = re.compile(r"^\..+\.(tmp|building|part|old)-([A-Za-z0-9_]+)-(\d+)-[0-9a-f]{8}$")
# the machine in a temporary's name: process ids mean something only on the machine that made them (an
# experiment folder or torchrun's output can live on a file system that several machines share)
HOST = re.sub(r"[^A-Za-z0-9_]", "_", socket.gethostname())[:32] or "host"
# temporaries of tiekd before this module, without an owner: reported, never removed
_OWNERLESS = re.compile(r"^\..+\.(tmp|tmp-[A-Za-z0-9_]{8}|building-\d+-[0-9a-f]{8}\.tmp)$")
_live: set[str] = set()  # temporaries this process is writing right now
_reported: set[str] = set()  # ownerless leftovers already reported


class WriteFailed(TiekdError):
    """An output could not be written (full disk, quota, I/O error); nothing partial was left."""


class ProcessKilled(BaseException):
    """Stands for SIGKILL in the fault-injection harness: raised at a write boundary, it skips every
    cleanup, so the files are left as a real kill leaves them."""


# ------------------------------------------------------------------ fault injection
@dataclass
class FaultPlan:
    at: int                  # the boundary that fails (1-based); 0: none, count only
    kind: str = "enospc"     # "enospc" or "kill"
    count: int = 0           # boundaries passed so far
    paths: list[str] = field(default_factory=list)  # what each boundary was about to write


_plan: FaultPlan | None = None


@contextlib.contextmanager
def inject_fault(at: int = 0, kind: str = "enospc"):
    """Within the block, the `at`-th write boundary fails (see the module docstring); yields the plan,
    whose `count` is the number of boundaries passed."""
    global _plan
    if kind not in ("enospc", "kill"):
        raise ValueError(f"unknown fault kind {kind!r}")
    previous, _plan = _plan, FaultPlan(at, kind)
    try:
        yield _plan
    finally:
        _plan = previous


def write_point(path: str | Path) -> None:
    """A write boundary: every physical write of tiekd passes one just before it starts."""
    plan = _plan
    if plan is None:
        return
    plan.count += 1
    plan.paths.append(str(path))
    if plan.count == plan.at:
        if plan.kind == "kill":
            raise ProcessKilled(str(path))
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))


# ------------------------------------------------------------------ failures
def _is_storage_failure(exc: BaseException) -> bool:
    if isinstance(exc, OSError) and exc.errno is not None:
        return exc.errno in STORAGE_ERRNOS
    return isinstance(exc, Exception) and bool(_STORAGE_MESSAGE.search(str(exc)))


def _megabytes(count: int) -> str:
    return f"{count / 1e6:,.1f} MB"


def failure_message(path: Path, exc: BaseException, needed: str | None = None) -> str:
    """`path`: what failed, the space free on its file system (and needed, when known), and the fix."""
    reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc).splitlines()[0][:200]
    probe = Path(path)
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        free = f"{_megabytes(shutil.disk_usage(probe).free)} free there"
    except OSError:
        free = "free space unknown"
    need = f", {needed} needed" if needed else ""
    code = exc.errno if isinstance(exc, OSError) else None
    if code == errno.EROFS or "Read-only" in reason:
        fix = "write to another folder (that file system is mounted read-only)"
    elif code == errno.EIO or "Input/output" in reason:
        fix = "check that disk (an I/O error is often a failing or disconnected device), or write elsewhere"
    else:
        fix = "free space on that file system or write to another folder"
    return (f"{path}: could not be written ({reason}; {free}{need}). Nothing half-written was left under that "
            f"name. Fix: {fix}, then run the same command again (it goes on from what was finished)")


@contextlib.contextmanager
def guarded(path: str | Path, needed: str | None = None):
    """Turn a storage failure inside the block into a `WriteFailed` about `path`; others pass through."""
    try:
        yield
    except WriteFailed:
        raise
    except Exception as exc:
        if _is_storage_failure(exc):
            raise WriteFailed(failure_message(Path(path), exc, needed)) from exc
        raise


# ------------------------------------------------------------------ temporaries
def temporary_path(target: str | Path, role: str = "tmp") -> Path:
    """A hidden unused name beside `target` (same file system: the rename is atomic) naming its owner."""
    target = Path(target)
    return target.parent / f".{target.name}.{role}-{HOST}-{os.getpid()}-{secrets.token_hex(4)}"


def _owner_ended(pid: int, path: Path) -> bool:
    if pid == os.getpid():
        return str(path) not in _live
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        return False
    return False


def sweep_leftovers(folder: str | Path) -> list[Path]:
    """Remove the temporaries in `folder` whose writer has ended (a killed run's); return them."""
    folder = Path(folder)
    removed = []
    try:
        entries = list(folder.iterdir())
    except OSError:
        return removed
    for entry in entries:
        match = _TEMPORARY.match(entry.name)
        if match and match.group(2) == HOST and _owner_ended(int(match.group(3)), entry):
            _remove(entry)
            removed.append(entry)
            log.warning("removed %s, left by a tiekd process (id %s) that ended before finishing it",
                        entry, match.group(3))
        elif not match and _OWNERLESS.match(entry.name) and str(entry) not in _reported:
            _reported.add(str(entry))
            log.warning("%s looks like a temporary left by an older tiekd; it names no owner, so it is kept. "
                        "Remove it if no tiekd process writes to %s", entry, folder)
    return removed


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _bytes_in(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else 0


# ------------------------------------------------------------------ files
def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write `data` to a temporary sibling, flush and fsync it, then rename it over `path`."""
    with atomic_stream(path, binary=True, needed=_megabytes(len(data))) as handle:
        handle.write(data)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, value) -> None:
    atomic_write_text(path, json.dumps(value, indent=2, ensure_ascii=False) + "\n")


@contextlib.contextmanager
def atomic_stream(path: str | Path, binary: bool = False, needed: str | None = None):
    """A file written a piece at a time (UTF-8 text with LF endings, or bytes): yields the open temporary,
    which replaces `path` once the block ends without error (fsynced first); removed on any error."""
    path = Path(path)
    with guarded(path, needed):
        path.parent.mkdir(parents=True, exist_ok=True)
    sweep_leftovers(path.parent)
    tmp = temporary_path(path)
    _live.add(str(tmp))
    try:
        with guarded(path, needed):
            with open(tmp, "wb") if binary else open(tmp, "w", encoding="utf-8", newline="\n") as handle:
                write_point(path)
                yield handle
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, path)
    except ProcessKilled:
        raise
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    finally:
        _live.discard(str(tmp))


def append_line(path: str | Path, line: str) -> None:
    """Append one line to a log (e.g. metrics.jsonl). A failure can tear only this last line, which
    the log's readers drop; the error names the file."""
    path = Path(path)
    with guarded(path):
        write_point(path)
        with open(path, "a", encoding="utf-8") as handle:
            handle.write(line + "\n")


# ------------------------------------------------------------------ folders
def fsync_dir(path: str | Path) -> None:
    """Make a rename inside `path` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def replace_dir(new: Path, target: Path) -> None:
    """Rename the finished folder `new` to `target`. An existing `target` is first renamed aside and
    deleted only once `new` is in place, so a crash at any point leaves one complete version."""
    new, target = Path(new), Path(target)
    if not target.exists():
        new.rename(target)
        return
    old = temporary_path(target, "old")
    _live.add(str(old))
    try:
        target.rename(old)
        try:
            new.rename(target)
        except BaseException:
            old.rename(target)
            raise
        shutil.rmtree(old, ignore_errors=True)
    finally:
        _live.discard(str(old))


@contextlib.contextmanager
def staged_folder(target: str | Path, role: str = "tmp"):
    """Yield an empty temporary folder beside `target`; when the block ends without error, it replaces
    `target` (an existing one is kept until the new one is in place). On any error the temporary is
    removed, and a storage failure becomes a `WriteFailed` naming `target`."""
    target = Path(target)
    with guarded(target):
        target.parent.mkdir(parents=True, exist_ok=True)
    sweep_leftovers(target.parent)
    tmp = temporary_path(target, role)
    _live.add(str(tmp))
    try:
        try:
            tmp.mkdir()  # not mkdtemp: the result gets the usual permissions, not 0700
            yield tmp
            fsync_dir(tmp)
            write_point(target)  # the rename
            replace_dir(tmp, target)
            fsync_dir(target.parent)
        except ProcessKilled:
            raise
        except WriteFailed as exc:  # from `call` inside the block: name the output, not its temporary
            _remove(tmp)
            raise WriteFailed(str(exc).replace(str(tmp), str(target))) from exc.__cause__
        except Exception as exc:
            if _is_storage_failure(exc):
                written = _bytes_in(tmp)
                _remove(tmp)
                message = failure_message(target, exc, f"more than {_megabytes(written)}" if written else None)
                raise WriteFailed(message.replace(str(tmp), str(target))) from exc
            _remove(tmp)
            raise
        except BaseException:
            _remove(tmp)
            raise
    finally:
        _live.discard(str(tmp))


def call(path: str | Path, writer, *args, **kwargs):
    """Run a library's writer that writes `path` (inside a staged folder): one write boundary, and its
    storage failures reported as `WriteFailed` about `path`."""
    with guarded(path):
        write_point(path)
        return writer(*args, **kwargs)


def copy_file(source: str | Path, target: str | Path) -> None:
    """Copy one file into a staged folder."""
    call(target, shutil.copyfile, source, target)


def save_figure(figure, path: str | Path, dpi: int = 120) -> Path:
    """A matplotlib figure as a PNG, rendered in memory and written whole (another experiment worker
    may be writing the same plot)."""
    import io

    image = io.BytesIO()
    figure.savefig(image, format="png", dpi=dpi)
    atomic_write_bytes(path, image.getvalue())
    return Path(path)
