"""lbx-file: a service's backends from a YAML or JSON file, watched for changes.

```yaml
discovery: {source: file, path: backends.yaml}
```

The file is a list of backends, or a mapping whose ``backends`` key is that list; each backend
is ``"ip:port"`` or ``{address, weight, enabled}``. It is polled (``update_frequency``, 1 s by
default): a change of its inode, size or modification time makes lbx read it again. Writers
replace it atomically (write a temporary file, then ``rename`` it over the old one), so lbx never
reads half a file. A file that cannot be read or is invalid keeps the last good set, and lbx logs
why once, in one line with the file and the line. See docs/discovery.md.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import anyio.to_thread
import yaml

from lbx import (
    Backend,
    Config,
    Discovered,
    DiscoveryError,
    Field,
    ServiceConfig,
    backend_entry,
    hookimpl,
)

SOURCE = "file"
DEFAULT_UPDATE_FREQUENCY = 1.0

KEYS = {"path": Field("str", None, "the file of backends (relative to the config file)")}


class BadFile(DiscoveryError, ValueError):
    """The file is not a valid list of backends; the message names the file and the line."""


@dataclass(frozen=True)
class Signature:
    """What changes when a file is rewritten or replaced."""

    inode: int
    size: int
    mtime_ns: int


class FileDiscovery:
    """The backends listed in one file."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.reads = 0
        self._signature: Signature | None = None
        self._last: Discovered | None = None
        self._failure: str | None = None
        """Why the file of ``_signature`` is invalid."""

    async def discover(self) -> Discovered:
        """The file's backends; ``BadFile`` for as long as it is missing or invalid (lbx keeps
        the last set and logs a lasting error once)."""
        try:
            st = os.stat(self.path)
        except OSError as exc:
            self._signature = None
            raise BadFile(f"{self.path}: {exc.strerror or exc}") from None
        signature = Signature(st.st_ino, st.st_size, st.st_mtime_ns)
        if signature == self._signature:  # unchanged: the same answer without reading it again
            if self._failure is not None:
                raise BadFile(self._failure)
            if self._last is not None:
                return self._last
        self._signature = signature
        try:
            found = await anyio.to_thread.run_sync(read_backends, self.path)
        except BadFile as exc:
            self._failure = str(exc)
            raise
        finally:
            self.reads += 1
        self._last, self._failure = found, None
        return found


def read_backends(path: str) -> Discovered:
    """Parse the file (YAML, of which JSON is a subset); ``BadFile`` says what is wrong where."""
    try:
        with open(path, encoding="utf-8") as stream:
            text = stream.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise BadFile(f"{path}: cannot read: {exc}") from None
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = f":{mark.line + 1}" if mark is not None else ""
        raise BadFile(f"{path}{line}: invalid YAML: {exc.problem or exc.context}") from None
    except yaml.YAMLError as exc:
        raise BadFile(f"{path}: invalid YAML: {exc}") from None
    if isinstance(node, yaml.MappingNode):
        found = None
        for key, value in node.value:
            if key.value != "backends":
                raise BadFile(f"{path}:{key.start_mark.line + 1}: unknown key {key.value!r}")
            found = value
        node = found
    if not isinstance(node, yaml.SequenceNode):
        line = f":{node.start_mark.line + 1}" if node is not None else ""
        raise BadFile(f"{path}{line}: expected a list of backends (or backends: [...])")
    backends: list[Backend] = []
    enabled: dict[str, bool] = {}
    loader = yaml.SafeLoader("")
    for item in node.value:
        where = f"{path}:{item.start_mark.line + 1}"
        value = loader.construct_object(item, deep=True)
        try:
            address, weight, on = backend_entry(value)
            parsed = Backend.parse(address, weight)
        except ValueError as exc:
            raise BadFile(f"{where}: {exc}") from None
        for backend in parsed:
            backends.append(backend)
            enabled[backend.addr] = on
    return Discovered(tuple(backends), enabled)


def build(options: dict[str, Any], service: ServiceConfig, config: Config) -> FileDiscovery:
    path = options["path"]
    if not path:
        raise ValueError("the file source needs a path")
    if not os.path.isabs(path):
        base = os.path.dirname(os.path.abspath(config.path)) if config.path else os.getcwd()
        path = os.path.normpath(os.path.join(base, path))
    return FileDiscovery(path)


@hookimpl
def register_discovery(register: Callable[..., None]) -> None:
    register(SOURCE, build, KEYS, DEFAULT_UPDATE_FREQUENCY)
