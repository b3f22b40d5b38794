"""Test sets by sacreBLEU's own names: `tests: {newstest2014: {sacrebleu: wmt14}}` in an experiment's
`data:` setting reads the source and first reference of sacreBLEU's test set `wmt14` for the experiment's
language pair from sacreBLEU's cache (~/.sacrebleu, or the folder $SACREBLEU names), the very files
`sacrebleu -t wmt14 -l de-en` scores against.

sacreBLEU fetches a test set it does not have yet, so a machine with internet needs no preparation; an
offline one needs the cache copied from one that has it. Either way the files are sacreBLEU's own, found
through its public dataset objects (`sacrebleu.dataset.DATASETS`: `fieldnames`, `get_files`).
"""

from __future__ import annotations

from pathlib import Path

from ..errors import TiekdError


def sacrebleu_test_files(name: str, src_lang: str, tgt_lang: str) -> tuple[Path, Path]:
    """(source, reference) text files of sacreBLEU's test set `name` for `src_lang`-`tgt_lang`; a test set
    with several references gives its first. A clear `TiekdError` (with the fix) for a name sacreBLEU
    does not know, a language pair the set lacks, or a set neither cached nor downloadable."""
    from sacrebleu import utils
    from sacrebleu.dataset import DATASETS

    langpair = f"{src_lang}-{tgt_lang}"
    if name not in DATASETS:
        close = [known for known in DATASETS if name.lower() in known.lower()][:8]
        raise TiekdError(f"sacreBLEU has no test set {name!r}" + (f" (similar: {', '.join(close)})" if close else "")
                         + ". Fix: name one that `sacrebleu --list` shows, or give the files: [SOURCE, REFERENCE]")
    dataset = DATASETS[name]
    if langpair not in dataset.langpairs:
        raise TiekdError(f"sacreBLEU's test set {name} has no {langpair} pair (it has "
                         f"{', '.join(sorted(dataset.langpairs)[:20])}). Fix: pick a test set of this language pair")
    try:  # newer (XML) sets read even their field names from the downloaded files
        fields = dataset.fieldnames(langpair)
        files = dataset.get_files(langpair)
    except (OSError, SystemExit) as exc:  # URLError is an OSError; sacreBLEU exits on an SSL failure
        cache = Path(utils.SACREBLEU_DIR)
        raise TiekdError(
            f"sacreBLEU's test set {name} ({langpair}) is not in its cache ({cache}) and could not be "
            f"downloaded ({type(exc).__name__}: {str(exc)[:160]}). Fix: on a machine with internet run "
            f"`sacrebleu -t {name} -l {langpair} --echo src > /dev/null`, then copy {cache} to this machine (or "
            "point $SACREBLEU at the copy); or give the test set's files: [SOURCE, REFERENCE]") from None
    references = [k for k, field in enumerate(fields) if field.startswith("ref")]
    if "src" not in fields or not references:
        raise TiekdError(f"sacreBLEU's test set {name} ({langpair}) has no source or reference field (fields: "
                         f"{', '.join(fields)}). Fix: give the test set's files: [SOURCE, REFERENCE]")
    return Path(files[fields.index("src")]), Path(files[references[0]])
