"""Counters shared by every process of one lbx: one row of float64 cells per process.

The memory is an anonymous shared mapping created in ``configure``, before the supervisor forks
its workers, so every process sees it. A process claims a row the first time it counts something
and is then the only writer of that row: increments are plain stores, with no lock and no lost
update. A reader sums the rows. A row whose process died keeps its counts (counters never go
down) and is reused by the next process that needs one; its gauge cells are ignored by readers
and reset by the new owner.
"""

from __future__ import annotations

import contextlib
import fcntl
import mmap
import os
import tempfile
from collections.abc import Sequence

_PID = 0  # cell 0 of each row: the pid of the process that owns it (0: never claimed)


class SharedRows:
    """``rows`` rows of ``columns`` float64 cells, in memory shared with forked children."""

    def __init__(self, columns: int, rows: int, gauges: Sequence[int] = ()) -> None:
        self.columns = columns
        self.rows = rows
        self.gauges = tuple(gauges)
        self.stride = columns + 1
        self._memory = mmap.mmap(-1, max(1, rows * self.stride) * 8)
        self.cells = memoryview(self._memory).cast("d")
        # Claiming a row takes a POSIX record lock: those are per process, so they also
        # exclude each other between children that inherited the same descriptor.
        fd, path = tempfile.mkstemp(prefix="lbx-rows-")
        os.unlink(path)
        self._lock_fd = fd
        self._base = -1
        os.register_at_fork(after_in_child=self._forget_row)

    def _forget_row(self) -> None:
        self._base = -1

    def row(self) -> int:
        """Offset of this process's first counter cell (claims a row on first use)."""
        base = self._base
        if base < 0:
            base = self._base = self._claim()
        return base

    def _claim(self) -> int:
        pid = os.getpid()
        cells, stride = self.cells, self.stride
        fcntl.lockf(self._lock_fd, fcntl.LOCK_EX)
        try:
            chosen = self.rows - 1  # all rows owned by live processes: share the last one
            for index in range(self.rows):
                owner = int(cells[index * stride + _PID])
                if owner == 0 or owner == pid or not _alive(owner):
                    chosen = index
                    break
            start = chosen * stride
            cells[start + _PID] = float(pid)
            for column in self.gauges:
                cells[start + 1 + column] = 0.0
        finally:
            fcntl.lockf(self._lock_fd, fcntl.LOCK_UN)
        return start + 1

    def totals(self) -> list[float]:
        """The sum of every row; gauge columns count only rows of live processes."""
        cells, stride = self.cells, self.stride
        result = [0.0] * self.columns
        for index in range(self.rows):
            start = index * stride
            owner = int(cells[start + _PID])
            if owner == 0:
                continue
            row: list[float] = [float(v) for v in cells[start + 1 : start + stride]]
            if self.gauges and not _alive(owner):
                for column in self.gauges:
                    row[column] = 0.0
            for column, value in enumerate(row):
                result[column] += value
        return result

    def claimed(self) -> list[memoryview[float]]:
        """The counter cells of every row a process claimed (live or not), as in ``row()``'s
        offsets minus the row's start: for columns that are not plain sums."""
        cells, stride = self.cells, self.stride
        return [
            cells[index * stride + 1 : (index + 1) * stride]
            for index in range(self.rows)
            if cells[index * stride + _PID] != 0
        ]

    def close(self) -> None:
        """Release the memory (tests; a server keeps it for its lifetime)."""
        with contextlib.suppress(OSError):
            os.close(self._lock_fd)
        self.cells.release()
        self._memory.close()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
