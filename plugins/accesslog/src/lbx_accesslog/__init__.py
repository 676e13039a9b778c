"""lbx-accesslog: one line per request, in the combined format or as JSON, written in batches.

The ``logging`` hook formats the line (``lines.py``) and appends it to a buffer in memory; the
buffer goes to the file in one ``write`` when it holds ``batch_lines`` lines, or
``flush_interval`` seconds after its first line (a timer on the worker's event loop), and at
shutdown. The file is opened with
``O_APPEND`` and every write holds whole lines, so the workers of ``threads: N`` share one file
without interleaving. The file is reopened when it was moved away (logrotate). See
docs/accesslog.md.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import errno
import os
from typing import Any

from lbx import (
    Config,
    ConfigError,
    ConfigSchema,
    Field,
    PluginManager,
    ProxyError,
    Server,
    Session,
    hookimpl,
)
from lbx_accesslog.lines import FIELDS, FORMATS, line_format

SECTION = "accesslog"


def _check_fields(value: Any) -> str | None:
    unknown = [name for name in value if name not in FIELDS]
    if unknown:
        return f"unknown field {unknown[0]!r}; known: {', '.join(FIELDS)}"
    return None


def _check_format(value: Any) -> str | None:
    return None if value in FORMATS else f"must be one of {', '.join(FORMATS)}"


CONFIG_KEYS = {
    "format": Field("str", "combined", "combined (Apache/nginx) or json", check=_check_format),
    "path": Field("str", None, "file to append to (default: stderr)"),
    "fields": Field(
        "str_list",
        None,
        "json: the keys of each object (default: all); combined: extra key=value fields",
        check=_check_fields,
    ),
    "batch_lines": Field("int", 256, "write once this many lines are buffered", minimum=1),
    "flush_interval": Field(
        "number", 0.5, "seconds a line may wait in the buffer before it is written", minimum=0
    ),
}


class AccessLog:
    """The buffer and the file of one process (each forked worker inherits the open file), and
    the hooks that fill and flush them."""

    def __init__(
        self,
        path: str | None,
        fmt: str,
        fields: list[str] | None,
        batch_lines: int,
        flush_interval: float,
    ) -> None:
        self.path = path
        self.format = line_format(fmt, fields)
        self.batch_lines = batch_lines
        self.flush_interval = flush_interval
        self.buffer: list[str] = []
        self.write_through = False
        self.lines_written = 0
        self._timer: asyncio.TimerHandle | None = None
        self._fd = -1
        self._inode: tuple[int, int] | None = None

    # -- the file ------------------------------------------------------------------------------
    def check(self) -> None:
        """Whether ``open`` would work, without creating the file (``lbx serve -t``)."""
        if self.path is None:
            return
        try:
            if os.path.exists(self.path):
                os.close(os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC))
            else:
                directory = os.path.dirname(os.path.abspath(self.path))
                if not os.path.isdir(directory):
                    missing = errno.ENOTDIR if os.path.exists(directory) else errno.ENOENT
                    raise OSError(missing, os.strerror(missing))
                if not os.access(directory, os.W_OK | os.X_OK):
                    raise OSError(errno.EACCES, os.strerror(errno.EACCES))
        except OSError as exc:
            raise ConfigError(
                f"accesslog.path: cannot open {self.path!r}: {exc.strerror or exc}"
            ) from None

    def open(self) -> None:
        """Open (or create) the file now, so a wrong path is a start-up error."""
        if self.path is None:
            self._fd = 2
            return
        try:
            self._fd = os.open(
                self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644
            )
        except OSError as exc:
            raise ConfigError(
                f"accesslog.path: cannot open {self.path!r}: {exc.strerror or exc}"
            ) from None
        st = os.fstat(self._fd)
        self._inode = (st.st_dev, st.st_ino)

    def _reopen_if_moved(self) -> None:
        if self.path is None:
            return
        try:
            st = os.stat(self.path)
            moved = (st.st_dev, st.st_ino) != self._inode
        except FileNotFoundError:
            moved = True
        if moved:
            old = self._fd
            self.open()
            with contextlib.suppress(OSError):
                os.close(old)

    def flush(self) -> None:
        """Write every buffered line in one ``write`` (``O_APPEND``: whole lines, never mixed)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self.buffer:
            return
        lines, self.buffer = self.buffer, []
        data = "".join(lines).encode("utf-8", "backslashreplace")
        if self._fd < 0:
            self.open()
        else:
            self._reopen_if_moved()
        view = memoryview(data)
        try:
            while view:
                view = view[os.write(self._fd, view) :]
        except OSError:
            # A full disk or a closed stderr must not fail requests; the lines are lost.
            return
        self.lines_written += len(lines)

    def close(self) -> None:
        self.flush()
        if self._fd > 2:
            with contextlib.suppress(OSError):
                os.close(self._fd)
        self._fd = -1

    # -- per request ---------------------------------------------------------------------------
    def add(self, line: str) -> None:
        buffer = self.buffer
        buffer.append(line)
        if self.write_through or len(buffer) >= self.batch_lines:
            self.flush()
        elif self._timer is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                self.flush()
                return
            self._timer = loop.call_later(self.flush_interval, self.flush)

    @hookimpl
    def logging(self, session: Session, error: ProxyError | None) -> None:
        self.add(self.format(session, error))

    @hookimpl
    async def server_stopping(self, server: Server) -> None:
        """Write what is buffered; lines of requests still draining are written at once."""
        self.write_through = True
        self.flush()


@hookimpl
def add_config_keys(schema: ConfigSchema) -> None:
    schema.add_section(SECTION, CONFIG_KEYS)


@hookimpl
def configure(config: Config, plugin_manager: PluginManager) -> None:
    """Open this run's ``AccessLog`` (before the workers fork) and register its hooks."""
    section = config.sections.get(SECTION) or {}
    values = {key: section.get(key, field.default) for key, field in CONFIG_KEYS.items()}
    log = AccessLog(
        values["path"],
        values["format"],
        values["fields"],
        values["batch_lines"],
        values["flush_interval"],
    )
    if config.test:
        log.check()  # as nginx -t opens its logs: a start would fail on this
        return
    log.open()  # before the workers fork: each inherits the descriptor
    atexit.register(log.close)
    plugin_manager.register(log, name="accesslog.log")
