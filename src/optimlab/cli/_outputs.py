"""Files a verb writes (--out, --html, --gif): checked before the work, written after the table.

Every verb does the same two things: `check(...)` each output path before it starts (a bad path is
one line, before minutes of work), then prints its table and only then `save(...)` each picture, so
a picture that cannot be written never costs the table.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path


def check(path: str | None, option: str, suffixes: tuple[str, ...] = ()) -> Path | None:
    """A file path that can be created or overwritten, or ValueError naming the option and the reason.

    suffixes: the extensions the writer understands (".png", ...); empty means any.
    """
    if path is None:
        return None
    target = Path(path).expanduser()
    if suffixes and target.suffix.lower() not in suffixes:
        raise ValueError(f"{option} {path}: the file name must end in one of {', '.join(suffixes)}")
    if target.is_dir():
        raise ValueError(f"{option} {path}: is a folder; give a file name")
    folder = target.parent
    if not folder.is_dir():
        raise ValueError(f"{option} {path}: the folder {str(folder)!r} does not exist")
    _try_create(target, option, path)
    return target


def check_folder(path: str | None, option: str) -> Path | None:
    """A folder that exists and takes new files, or one whose parent does (the folder is then made)."""
    if path is None:
        return None
    target = Path(path).expanduser()
    if target.exists() and not target.is_dir():
        raise ValueError(f"{option} {path}: is a file, not a folder")
    home = target if target.is_dir() else target.parent
    if not home.is_dir():
        raise ValueError(f"{option} {path}: the folder {str(home)!r} does not exist")
    _try_create(home / ".optimlab-write-check", option, path)
    return target


def _try_create(target: Path, option: str, shown: str) -> None:
    # permissions alone do not say it (root ignores them; /proc refuses new files): try, then tidy up
    existed = target.exists()
    try:
        with open(target, "ab"):
            pass
    except OSError as err:
        raise ValueError(f"{option} {shown}: cannot write there ({err.strerror or err})") from None
    if not existed:
        target.unlink()


def require(path, *modules: str) -> None:
    """Import the writer's libraries now, when there is a file to write: a core install (no lab extra)
    then fails in one line before the work, not after it."""
    if path is not None:
        for module in modules:
            importlib.import_module(module)


def save(path, write, what: str = "") -> bool:
    """Call write(path); if it fails, say so in one line on stderr and return False (the table stays)."""
    try:
        write(path)
    except (OSError, ValueError) as err:
        print(f"optimlab: could not write {what or path}: {err}", file=sys.stderr)
        return False
    return True


def failed(results: list[bool]) -> int:
    """The exit status after saving: 0 when every file was written, 1 otherwise."""
    return 0 if all(results) else 1

