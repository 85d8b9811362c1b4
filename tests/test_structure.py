"""The package's structure holds to its targets (bench/structure.py measures them from the source).

No function over 100 lines, no import cycle (function-level imports count), no module importing another's
private names, and the run directory's file names spelled in whetstone/rundir.py alone. The checker itself is
tested on a small package built here, so that a target cannot pass by the checker missing what it looks for.
"""

import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import structure  # noqa: E402


def test_no_function_over_the_limit():
    assert structure.long_functions() == []


def test_no_import_cycle():
    assert structure.cycles() == []


def test_no_private_names_imported_across_modules():
    assert structure.private_imports() == []


def test_run_directory_names_live_in_one_module():
    assert sorted(structure.run_dir_name_files()) == ["whetstone/rundir.py"]


@pytest.fixture
def toy_package(tmp_path, monkeypatch):
    """A package `whetstone` of four modules with one cycle (through a function-level import), one private import,
    one 101-line function and one run-directory name, read by the checker in place of the real one."""
    package = tmp_path / "whetstone"
    (package / "train").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "train" / "__init__.py").write_text("")
    (package / "train" / "loop.py").write_text(textwrap.dedent("""
        from whetstone.train.stages import run_pipeline

        def _seed():
            return 0
    """))
    (package / "train" / "stages.py").write_text(textwrap.dedent("""
        def run_pipeline():
            from whetstone.train import loop  # a late import: still an edge
            return loop
    """))
    body = "\n".join(f"    x{i} = {i}" for i in range(99))
    (package / "long.py").write_text(f"from whetstone.train.loop import _seed\n\ndef long():\n{body}\n    return 0\n")
    (package / "reader.py").write_text('def read(path):\n    return path / "summary.json", path / "adapter"\n')
    monkeypatch.setattr(structure, "ROOT", tmp_path)
    monkeypatch.setattr(structure, "PACKAGE", package)
    return package


def test_checker_finds_what_it_looks_for(toy_package):
    assert structure.long_functions() == [(101, "whetstone.long:long")]
    assert structure.cycles() == [["whetstone.train.loop", "whetstone.train.stages"]]
    assert structure.private_imports() == ["whetstone.long -> whetstone.train.loop._seed"]
    assert structure.run_dir_name_files() == {"whetstone/reader.py": ["adapter", "summary.json"]}
