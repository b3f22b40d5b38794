"""docs/cli.md is generated from the CLI's parsers and RunConfig's fields (scripts/make_cli_doc.py): a
flag, default or help changed without regenerating it fails here."""

from __future__ import annotations

import dataclasses
import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType

from tiekd.config import RunConfig, flag_name

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "make_cli_doc.py"
DOC = REPO / "docs" / "cli.md"


def _generator() -> ModuleType:
    """scripts/make_cli_doc.py (not a package) imported as a module."""
    spec = importlib.util.spec_from_file_location("make_cli_doc", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _section(doc: str, command: str) -> str:
    """The text of `## tiekd COMMAND` up to the next command's heading."""
    return doc.split(f"\n## tiekd {command}\n", 1)[1].split("\n## ", 1)[0]


def test_docs_cli_md_is_the_generated_text():
    assert DOC.read_text(encoding="utf-8") == _generator().cli_doc(), \
        "docs/cli.md is stale: run python scripts/make_cli_doc.py"


def test_every_run_config_field_is_documented_where_its_flag_exists():
    doc = DOC.read_text(encoding="utf-8")
    train, distill = _section(doc, "train"), _section(doc, "distill")
    for field in dataclasses.fields(RunConfig):
        row = f"| `{flag_name(field.name)}"
        assert row in distill and f"(config key `{field.name}`)" in distill, field.name
        assert (row in train) == (not field.metadata["distill_only"]), field.name


def test_check_names_a_stale_or_missing_file_and_the_fix(tmp_path, capsys):
    generator = _generator()
    text = generator.cli_doc()
    doc = tmp_path / "cli.md"
    assert generator.check(text, doc) == 1
    doc.write_text(text.replace("| `--lr LR` | `0.0007` |", "| `--lr LR` | `0.001` |"), encoding="utf-8")
    assert generator.check(text, doc) == 1
    doc.write_text(text, encoding="utf-8")
    assert generator.check(text, doc) == 0
    messages = capsys.readouterr().err.splitlines()
    assert messages == [f"{doc} is missing: run python scripts/make_cli_doc.py",
                        f"{doc} is stale: run python scripts/make_cli_doc.py"]


def test_the_script_checks_the_repository_doc_without_importing_torch():
    """`--check` on the committed doc exits 0, and building every parser left torch unimported (the CLI
    keeps it out of `--help`; the generator must not pull it in)."""
    code = ("import runpy, sys\n"
            "script = sys.argv[1]\n"
            "sys.argv = [script, '--check']\n"
            "try:\n"
            "    runpy.run_path(script, run_name='__main__')\n"
            "except SystemExit as stop:\n"
            "    print('exit', stop.code)\n"
            "print('torch imported' if 'torch' in sys.modules else 'no torch')\n")
    result = subprocess.run([sys.executable, "-c", code, str(SCRIPT)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\n")[:2] == ["exit 0", "no torch"], result.stdout + result.stderr
