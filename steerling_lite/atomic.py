"""Atomic writes: a file or a whole directory appears complete or not at all.

Both write under a temporary name in the destination's own directory (so the final
``os.replace`` is a rename on one file system) and remove the temporary on any error.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` through a synced temporary file and a rename.

    Raises:
        OSError: the directory cannot be created or written.
    """
    path = Path(path).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes it private
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return path


@contextmanager
def atomic_directory(out_dir: str | Path, replace: bool = False) -> Iterator[Path]:
    """Yield a fresh temporary directory beside ``out_dir``; when the block ends without an
    error it is renamed to ``out_dir`` (an existing ``out_dir`` is replaced if ``replace``),
    with ordinary permissions; on an error it is deleted and ``out_dir`` is left as it was.

    Raises:
        FileExistsError: ``out_dir`` exists and ``replace`` is false (checked before and after).
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and not replace:
        raise FileExistsError(f"{out_dir}: already exists; choose a new directory")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        yield tmp
        umask = _umask()
        os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it private
        for f in tmp.iterdir():
            if f.is_file():
                os.chmod(f, 0o666 & ~umask)
        if out_dir.exists():
            if not replace:
                raise FileExistsError(f"{out_dir}: already exists; choose a new directory")
            shutil.rmtree(out_dir)
        os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
