"""Atomic writes: a file or a whole directory appears complete or not at all.

Both write under a temporary name in the destination's own directory (so the final
``os.replace`` is a rename on one file system) and remove the temporary on any error, on
Ctrl-C (SIGINT) and on SIGTERM (turned into :class:`Terminated` while a write is under way).
A SIGKILL cannot be caught: its leftover temporary directory (``.NAME.*.partial`` holding an
owner file with the writer's process id) is recognised and removed by the next write beside it
once that process is gone.
"""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from quant.stale import OWNER_FILE, claim, remove_stale


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` through a synced temporary file and a rename.

    Raises:
        OSError: the directory cannot be created or written (the temporary is removed).
        Terminated: SIGTERM arrived during the write (after the cleanup).
    """
    return write_bytes_atomic(path, text.encode("utf-8"))


def write_bytes_atomic(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` through a synced temporary file and a rename (as
    :func:`write_text_atomic`; e.g. a PNG a plotting library rendered into memory).

    Raises:
        OSError: the directory cannot be created or written (the temporary is removed).
        Terminated: SIGTERM arrived during the write (after the cleanup).
    """
    path = Path(path).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    with cleanup_on_sigterm():
        return _write_bytes(path, data)


def _write_bytes(path: Path, data: bytes) -> Path:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes it private
        os.replace(tmp, path)
    except BaseException as exc:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise _naming(exc, path)
    return path


def _naming(exc: BaseException, path: Path) -> BaseException:
    """``exc``, or for an operating-system error that names no file (a write on a full disk) the
    same error naming ``path``, so that the one-line message says where."""
    if isinstance(exc, OSError) and exc.filename is None and exc.strerror:
        named = OSError(exc.errno, exc.strerror, str(path))
        named.__cause__ = exc
        return named
    return exc


PARTIAL_SUFFIX = ".partial"


class Terminated(BaseException):
    """SIGTERM arrived during an atomic write (a BaseException, as KeyboardInterrupt is, so only
    cleanup code sees it); the CLI reports it like an interrupt."""


@contextmanager
def cleanup_on_sigterm() -> Iterator[None]:
    """Within the block, SIGTERM raises :class:`Terminated` in the main thread so that ``finally``
    / ``except`` clauses remove temporaries (elsewhere: no change)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def raise_terminated(signum, frame):
        raise Terminated(f"terminated by signal {signum}")

    previous = signal.signal(signal.SIGTERM, raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def remove_stale_partials(out_dir: Path) -> list[Path]:
    """Remove the ``.NAME.*.partial`` directories beside ``out_dir`` whose writer process is gone
    (left by a SIGKILL or a power cut); returns those removed (:func:`quant.stale.remove_stale`)."""
    return remove_stale(out_dir.parent, f".{out_dir.name}.*{PARTIAL_SUFFIX}")


@contextmanager
def atomic_directory(out_dir: str | Path, replace: bool = False) -> Iterator[Path]:
    """Yield a fresh temporary directory beside ``out_dir``; when the block ends without an
    error it is renamed to ``out_dir`` (an existing ``out_dir`` is replaced if ``replace``),
    with ordinary permissions; on an error, Ctrl-C or SIGTERM it is deleted and ``out_dir``
    is left as it was. Stale temporaries of an earlier killed write are removed first.

    Raises:
        FileExistsError: ``out_dir`` exists and ``replace`` is false (checked before and after).
        Terminated: SIGTERM arrived during the write (after the cleanup).
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and not replace:
        raise FileExistsError(f"{out_dir}: already exists; choose a new directory")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_partials(out_dir)
    with cleanup_on_sigterm():
        tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=PARTIAL_SUFFIX, dir=out_dir.parent))
        try:
            claim(tmp)
            yield tmp
            (tmp / OWNER_FILE).unlink()
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
        except BaseException as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            raise _naming(exc, out_dir)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
