"""What a command may replace: only what whetstone wrote, and only once the new copy is complete.

A run directory and a directory export carry a marker file that whetstone writes into them
(`.whetstone-run`, `.whetstone-export`). `--overwrite` replaces a directory only when it holds
that marker, or has the shape whetstone gave it before markers existed, and holds nothing that
whetstone does not write there: a `.git`, a `pyproject.toml` or a note the user dropped in stops
it. No command writes to the file it reads, or to the current directory, one above it, or home.

New outputs are built beside the target (same filesystem, so renames are atomic), checked there,
and swapped in by renames: a failed check leaves the old output as it was.
"""

from __future__ import annotations

import fnmatch
import json
import os
import secrets
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from whetstone.errors import WhetstoneError


@dataclass(frozen=True)
class DirectoryKind:
    """A kind of directory whetstone writes, as `--overwrite` recognises it."""

    name: str  # "run directory", "export": said in errors
    marker: str  # written into every such directory when whetstone creates it
    entries: tuple[str, ...]  # fnmatch patterns of the top-level names whetstone writes there
    legacy: Callable[[Path], bool]  # the shape of one written before the marker existed
    hint: str = ""  # another way out, said when --overwrite is missing; {path} is the directory


def write_marker(directory: Path, kind: DirectoryKind, **fields) -> None:
    """Mark `directory` as whetstone's, so that a later --overwrite may replace it."""
    payload = {"kind": kind.name, **fields, "written": time.strftime("%Y-%m-%dT%H:%M:%S")}
    (directory / kind.marker).write_text(json.dumps(payload, indent=2) + "\n")


def refuse_broad_target(path: Path, flag: str = "-o") -> None:
    """Refuse the current directory, a directory above it, or home: never a run's or an export's own."""
    target = path.resolve()
    cwd = Path.cwd().resolve()
    if target == cwd or target in cwd.parents or target == Path.home().resolve():
        place = "your home directory" if target == Path.home().resolve() else \
            "the current directory" if target == cwd else "a directory above the current one"
        raise WhetstoneError(f"{flag} {path}: that is {place}; whetstone writes a whole directory there (and "
                             f"--overwrite would replace it), so name a new one, e.g. {flag} {path / 'out'}.")


def check_replaceable(path: Path, kind: DirectoryKind, overwrite: bool, flag: str = "-o") -> bool:
    """Raise unless `path` may become a new `kind`; return True when something is there to replace."""
    refuse_broad_target(path, flag)
    if not path.exists():
        return False
    if not path.is_dir():
        raise WhetstoneError(f"{flag} {path}: is a file, not a directory; choose another {flag}.")
    names = sorted(p.name for p in path.iterdir())
    if not names:
        return False
    if not overwrite:
        raise WhetstoneError(f"{kind.name} {path} already exists. Pass --overwrite to replace it"
                             f"{kind.hint.format(path=path)}, or choose another {flag}.")
    if path.is_symlink():
        raise WhetstoneError(f"--overwrite refused: {path} is a symbolic link; name the directory it points to, "
                             f"{path.resolve()}, if that is what to replace.")
    if not (path / kind.marker).is_file() and not kind.legacy(path):
        raise WhetstoneError(f"--overwrite refused: {path} is not a whetstone {kind.name} (no {kind.marker} in "
                             f"it), so it is not deleted. Choose an empty or new directory.")
    foreign = [n for n in names if not any(fnmatch.fnmatchcase(n, p) for p in kind.entries)]
    if foreign:
        more = f" and {len(foreign) - 3} more" if len(foreign) > 3 else ""
        raise WhetstoneError(f"--overwrite refused: {path} holds {', '.join(foreign[:3])}{more}, which whetstone "
                             f"did not write, so it is not deleted. Move those out, or delete the directory yourself.")
    return True


@contextmanager
def staged(target: Path) -> Iterator[Path]:
    """A new empty directory beside `target` to build the output in; gone afterwards unless swapped in."""
    target.parent.mkdir(parents=True, exist_ok=True)
    # Not tempfile.mkdtemp: its 0700 mode would become the output's once swapped in.
    tmp = target.with_name(f".{target.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")
    tmp.mkdir()
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def swap_in(new: Path, target: Path) -> None:
    """Put the complete directory `new` at `target`, replacing what is there.

    A directory cannot be renamed over a non-empty one, so the old one is renamed aside first: a crash
    between the renames leaves both complete (old as .NAME.old-PID), never a half one at `target`.
    """
    old = None
    if target.exists() or target.is_symlink():
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        os.rename(target, old)
    os.rename(new, target)
    if old is not None:
        if old.is_dir() and not old.is_symlink():
            shutil.rmtree(old)
        else:
            old.unlink()


def refuse_input_as_output(source: str | Path | None, output: str | Path, command: str) -> None:
    """A command never writes over the file it reads, however the two paths are spelled."""
    if source and os.path.exists(source) and os.path.exists(output) and os.path.samefile(source, output):
        raise WhetstoneError(
            f"the output {output} is the input file; {command} never modifies its input, so choose another name."
        )


def refuse_existing(path: str | Path, overwrite: bool) -> None:
    if os.path.exists(path) and not overwrite:
        raise WhetstoneError(f"{path} already exists; pass --overwrite to replace it, or choose another output name.")
