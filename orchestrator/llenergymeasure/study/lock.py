"""One ``llem`` process per study directory: an advisory lock on ``<study dir>/.lock``.

:class:`StudyLock` takes ``fcntl.flock(LOCK_EX | LOCK_NB)`` on the lock file for as long as the
study runs. A second ``llem run --resume`` of the same study is refused at once, naming the
holder's pid. The kernel drops the lock when the holding process exits, however it exits
(normal exit, SIGKILL, a crash), so a stale lock can never block a resume. A clean exit (the
study finished, failed, or stopped by Ctrl-C/SIGTERM) also removes the file, so a finished study
folder holds only results; after a crash the file stays and is harmless.

The file is unlinked while still locked. A process that opened it just before the unlink and
locks it afterwards holds a lock on a file no longer in the folder: :meth:`StudyLock.acquire`
checks that the locked file is still the one at the path and otherwise starts again.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path
from types import TracebackType

from llenergymeasure.errors import PreflightError

LOCK_FILE = ".lock"


class StudyLock:
    """An exclusive, non-blocking lock on a study directory (use as a context manager)."""

    def __init__(self, study_dir: Path) -> None:
        self.path = study_dir / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock.

        Raises:
            PreflightError: another live process holds it (its pid is named).
        """
        while True:
            fd = self._lock_fd()
            if _same_file(fd, self.path):
                break
            os.close(fd)  # unlinked by the previous holder between our open and lock: retry
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd

    def _lock_fd(self) -> int:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_pid(fd)
            os.close(fd)
            who = f" (pid {holder})" if holder else ""
            raise PreflightError(
                [f"{self.path.parent} is being run by another llem process{who}"],
                hint="wait for it to finish or stop it (Ctrl-C), then resume; two processes "
                "must never run one study",
            ) from None
        except BaseException:
            os.close(fd)
            raise
        return fd

    def release(self) -> None:
        """Remove the lock file, then drop the lock (closing the descriptor releases it)."""
        if self._fd is not None:
            if _same_file(self._fd, self.path):
                with contextlib.suppress(OSError):
                    self.path.unlink()
            with contextlib.suppress(OSError):
                fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> StudyLock:
        self.acquire()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()


def _same_file(fd: int, path: Path) -> bool:
    """Whether the open file ``fd`` is the file at ``path`` (not unlinked or replaced)."""
    try:
        st = os.stat(path)
    except OSError:
        return False
    fst = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (fst.st_dev, fst.st_ino)


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", errors="replace").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None
