"""Multi30k Task 1 (Elliott et al. 2016, https://github.com/multi30k/dataset): locate a local copy or
download the raw `<split>.<lang>.gz` files, checked against SHA-256 sums embedded here.

The checksums are of the *gunzipped* files of commit a3d2e0d26b56f3846f66a952536ffed4e401d05a (the
copy in `../shared/data/multi30k`). A download is written under a temporary name and renamed into place
only once its checksum matches, so a folder never holds a partial or wrong file under a real name.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import re
import sys
import urllib.error
import urllib.request
from pathlib import Path

from .. import writes
from ..errors import TiekdError, input_error

DEFAULT_BASE_URL = "https://github.com/multi30k/dataset/raw/master/data/task1/raw"
URL_ENV = "TIEKD_MULTI30K_URL"  # overrides the download base URL (a mirror, or a test server)
DIR_ENV = "TIEKD_MULTI30K_DIR"  # where a local copy lives, if not in ../shared/data/multi30k

# our split name -> Multi30k file stem; "val" is called "valid" everywhere in tiekd
SPLITS = {
    "train": "train",
    "valid": "val",
    "test_2016_flickr": "test_2016_flickr",
    "test_2017_flickr": "test_2017_flickr",
    "test_2017_mscoco": "test_2017_mscoco",
    "test_2018_flickr": "test_2018_flickr",
}
REQUIRED_SPLITS = ("train", "valid")

SHA256 = {
    "test_2016_flickr.de": "4be6b5b3236b79c25475c6bb829800a7ce559e9ba7a1f6c2394fe4d40be46d16",
    "test_2016_flickr.en": "399a4382932c1aadd3ceb9bef1008d388a64c76d4ae4e9d4728c6f4301cac182",
    "test_2017_flickr.de": "c3078bc3b36808bf9d20eb2347ed6137016179ef59ec0d2b9b8ecc3fb2880081",
    "test_2017_flickr.en": "ce1450ddc5ab0834502579d77a170849952e15a2938b34cc503bdc25ebb4fb98",
    "test_2017_mscoco.de": "58277df3c75f92f7145a11b910b553d1cf82c439249d4dc237c899609eafac22",
    "test_2017_mscoco.en": "43051fdfa86fd5395182e718a94ca67b1b227b9f7c79596ff0f6b813216981d2",
    "test_2018_flickr.de": "39fcc8b3331d76fb42d648d019c6898b0d5e58baac87bc2a0bb93f44ec8db207",
    "test_2018_flickr.en": "4e585c2dd525911a6ea7730e9d0b516239af3f1b1ffae6a2130223cfb639f25e",
    "train.de": "2c2b73fd2b548fbcde3a875e0a78d6ee94d498bfdee6bd3eae3945779e9ddf72",
    "train.en": "460a15fbd157e34a7a9957ee388c1ca247fe47af3ef25fb50442af6c274e0fc6",
    "val.de": "660e09eb7e1da2f856ea13ee5ad3cf6d36b3d5b0b733c857e94c5747a3dfc660",
    "val.en": "1f2a23d992769b5b3d209b0a10dd0b77c08cceb1f20dfb97ed0aafa49d107227",
}


def default_dirs() -> list[Path]:
    """Where to look for a local copy, in order: $TIEKD_MULTI30K_DIR, ../shared/data/multi30k from the
    current folder, and the same beside the repository this package is in."""
    candidates = [Path(os.environ[DIR_ENV])] if os.environ.get(DIR_ENV) else []
    candidates.append(Path.cwd() / ".." / "shared" / "data" / "multi30k")
    candidates.append(Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "multi30k")
    return candidates


def default_cache_dir() -> Path:
    """Where `--download` puts the files when no folder is named."""
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "tiekd" / "multi30k"


def find_multi30k(folder: str | Path | None = None) -> Path:
    """The folder holding Multi30k: `folder` if given (it must exist), else the first default that does."""
    if folder is not None:
        folder = Path(folder)
        if not folder.is_dir():
            raise input_error(folder, "no such folder", "pass the folder holding train.de, train.en, val.de, ... "
                                      "or use --download")
        return folder
    for candidate in default_dirs():
        if (candidate / "train.de").is_file() or (candidate / "train.en").is_file():
            return candidate.resolve()
    tried = ", ".join(str(p) for p in default_dirs())
    raise TiekdError(
        f"Multi30k not found (looked in {tried}). Fix: pass --multi30k DIR, set {DIR_ENV}, or use --download"
    )


VALID_STEMS = ("val", "valid")  # Multi30k says val; other corpora laid out the same way often say valid
NOT_DATA = re.compile(r"^(README|LICEN[CS]E|SHA256SUMS|MD5SUMS|CHANGES|NOTICE)|\.(md|sha256|md5|json|yaml)$",
                      re.IGNORECASE)


def multi30k_files(folder: Path, src_lang: str, tgt_lang: str, warn=None) -> dict[str, tuple[Path, Path]]:
    """Split name -> (source file, target file) of a folder laid out like Multi30k (`folder_files`);
    each file it leaves out is reported through `warn` (default: a warning on stderr)."""
    files, ignored = folder_files(folder, src_lang, tgt_lang)
    for message in ignored:
        (warn or _warn)(message)
    return files


def folder_files(folder: Path, src_lang: str, tgt_lang: str) -> tuple[dict[str, tuple[Path, Path]], list[str]]:
    """(split name -> (source file, target file), what was left out) for a folder laid out like Multi30k:
    train.<lang>, val.<lang> (or valid.<lang>) and every test_<name>.<lang> pair, Multi30k's own test
    sets first in their usual order, then the others by name. train and valid must exist in both
    languages; a test set with one language only, and every other file that looks like data, is left
    out with a sentence saying so (not every language has every test set)."""
    folder = Path(folder)
    valid_stem = next((stem for stem in VALID_STEMS if (folder / f"{stem}.{src_lang}").is_file()
                       or (folder / f"{stem}.{tgt_lang}").is_file()), "val")
    stems = {"train": "train", "valid": valid_stem}
    known = [stem for stem in SPLITS.values() if stem.startswith("test_")]
    found = sorted({p.name[: -len(p.suffix)] for p in folder.glob("test_*.*") if p.suffix[1:] in (src_lang, tgt_lang)})
    for stem in [*[s for s in known if s in found], *[s for s in found if s not in known]]:
        stems[stem] = stem
    files, ignored = {}, []
    for split, stem in stems.items():
        src, tgt = folder / f"{stem}.{src_lang}", folder / f"{stem}.{tgt_lang}"
        missing = [p for p in (src, tgt) if not p.is_file()]
        if not missing:
            files[split] = (src, tgt)
        elif split in REQUIRED_SPLITS:
            names = " or ".join(f"{s}.{lang}" for s in (VALID_STEMS if split == "valid" else (stem,))
                                for lang in (src_lang, tgt_lang) if not (folder / f"{s}.{lang}").is_file())
            raise input_error(
                missing[0], f"no such file ({src_lang}-{tgt_lang} {split} split of a Multi30k-shaped folder, "
                            f"which needs {names})",
                f"pass a folder with {stem}.{src_lang} and {stem}.{tgt_lang} (check --src-lang/--tgt-lang), "
                "or use --download for Multi30k",
            )
        else:
            ignored.append(f"{missing[0]}: missing, so test set {stem} is left out (it has only "
                           f"{(tgt if missing[0] == src else src).name})")
    used = {p.name for pair in files.values() for p in pair}
    for path in sorted(folder.iterdir()):
        if path.is_file() and path.name not in used and not path.name.startswith(".") \
                and not NOT_DATA.search(path.name) and not any(path.name in m for m in ignored):
            ignored.append(f"{path}: left out: not train, {valid_stem} or test_<name> in {src_lang} or {tgt_lang}")
    return files, ignored


def _warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr, flush=True)


def download_multi30k(
    dest: str | Path, langs: tuple[str, ...] = ("de", "en"), *, base_url: str | None = None,
    checksums: dict[str, str] | None = None, timeout: float = 60.0, log=print,
) -> Path:
    """Download every Multi30k split for `langs` into `dest` (kept when already there and verified).

    `base_url` defaults to $TIEKD_MULTI30K_URL, then the multi30k/dataset GitHub repository;
    `checksums` (file name -> SHA-256 of the gunzipped file) defaults to the table above."""
    dest = Path(dest)
    base_url = (base_url or os.environ.get(URL_ENV) or DEFAULT_BASE_URL).rstrip("/")
    checksums = SHA256 if checksums is None else checksums
    names = [f"{stem}.{lang}" for stem in SPLITS.values() for lang in langs]
    unknown = [n for n in names if n not in checksums]
    if unknown:
        raise TiekdError(
            f"no checksum known for Multi30k {', '.join(unknown)}, so it cannot be downloaded safely. "
            f"Fix: use --src-lang/--tgt-lang among de, en, or download the files yourself and pass --multi30k DIR"
        )
    for name in names:
        target = dest / name
        if target.is_file() and _sha256(target) == checksums[name]:
            continue
        url = f"{base_url}/{name}.gz"
        if log:
            log(f"downloading {url}")
        _download_verified(url, target, checksums[name], timeout)
    return dest


def _download_verified(url: str, target: Path, expected_sha256: str, timeout: float) -> None:
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        writes.sweep_leftovers(target.parent)
        tmp = writes.temporary_path(target, "part")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except OSError as exc:
        raise input_error(target.parent, f"cannot write the download there ({exc.strerror})",
                          "pass a writable folder with --multi30k DIR") from None
    try:
        writes.write_point(target)
        with os.fdopen(fd, "wb") as sink, urllib.request.urlopen(url, timeout=timeout) as response:
            # gunzip while hashing; the .gz itself is never kept
            with gzip.GzipFile(fileobj=response) as unzipped:
                digest = hashlib.sha256()
                while chunk := unzipped.read(1 << 20):
                    digest.update(chunk)
                    sink.write(chunk)
        if digest.hexdigest() != expected_sha256:
            raise TiekdError(
                f"{url}: checksum mismatch after gunzip (got {digest.hexdigest()}, expected {expected_sha256}); "
                f"nothing was kept. Fix: retry later, or check that {URL_ENV} / the URL points at Multi30k"
            )
        os.replace(tmp, target)
    except OSError as exc:
        if exc.errno in writes.STORAGE_ERRNOS:
            raise writes.WriteFailed(writes.failure_message(target, exc)) from exc
        raise TiekdError(
            f"{url}: download failed ({type(exc).__name__}: {exc}). Fix: check the network or the URL "
            f"({URL_ENV}), or pass a local copy with --multi30k DIR"
        ) from exc
    except (urllib.error.URLError, EOFError, gzip.BadGzipFile) as exc:
        raise TiekdError(
            f"{url}: download failed ({type(exc).__name__}: {exc}). Fix: check the network or the URL "
            f"({URL_ENV}), or pass a local copy with --multi30k DIR"
        ) from exc
    finally:
        tmp.unlink(missing_ok=True)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()
