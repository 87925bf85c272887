"""Atomic file writes: a crash, Ctrl-C or SIGTERM never leaves a half-written file.

Files are created with the permissions the process umask allows (like `open`), not
the 0600 of `tempfile.mkstemp`, so collaborators can read results.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any

TEMP_SUFFIX = ".tmp"


def _current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_UMASK = _current_umask()


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write to a temporary file in the same folder, fsync, then rename over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TEMP_SUFFIX)
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def remove_stale_temp_files(*directories: str | Path) -> int:
    """Delete the temporary files that killed writers left in `directories`; returns how
    many. Call it only while holding the run directory's lock (no writer is active)."""
    removed = 0
    for directory in directories:
        for tmp in Path(directory).glob(f".*{TEMP_SUFFIX}"):
            if tmp.is_file():
                tmp.unlink(missing_ok=True)
                removed += 1
    return removed


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode())


def atomic_write_jsonl(path: str | Path, records: list[dict]) -> None:
    atomic_write_bytes(path, "".join(json.dumps(r) + "\n" for r in records).encode())


def read_jsonl(path: str | Path) -> list[dict]:
    """Records of a JSON-lines file; a torn last line (from a crash) is skipped."""
    path = Path(path)
    if not path.exists():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


class JsonlWriter:
    """Appends one JSON record per line and flushes it to disk at once. A torn last line
    left by a crash is ended first, so the next record is never glued to it."""

    def __init__(self, path: str | Path) -> None:
        path = Path(path)
        torn = path.exists() and path.stat().st_size > 0 and not _ends_with_newline(path)
        self._file = open(path, "a", buffering=1)
        if torn:
            self._file.write("\n")

    def write(self, record: dict) -> None:
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        self._file.close()


def _ends_with_newline(path: Path) -> bool:
    with open(path, "rb") as f:
        f.seek(-1, os.SEEK_END)
        return f.read(1) == b"\n"


class JsonlMemo:
    """Results of a deterministic computation, one JSON line per result, so a job killed
    part-way recomputes only what it had not finished. Keys are JSON-able dicts."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._known = {_memo_key(r["key"]): r["value"] for r in read_jsonl(self.path)
                       if isinstance(r, dict) and "key" in r and "value" in r}

    def get(self, key: dict) -> Any | None:
        return self._known.get(_memo_key(key))

    def put(self, key: dict, value: Any) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        writer = JsonlWriter(self.path)
        try:
            writer.write({"key": key, "value": value})
        finally:
            writer.close()
        self._known[_memo_key(key)] = value


def _memo_key(key: dict) -> str:
    return json.dumps(key, sort_keys=True)


def is_run_directory(path: str | Path) -> bool:
    """Whether `path` holds an offmarl run: its config.json and metrics.jsonl."""
    path = Path(path)
    return (path / "config.json").is_file() and (path / "metrics.jsonl").is_file()


def enclosing_run_directory(path: str | Path) -> Path | None:
    """The run directory that `path` is, or lies inside, if any."""
    path = Path(os.path.abspath(path))  # `..` collapsed: `.parents` is lexical
    return next((p for p in (path, *path.parents) if is_run_directory(p)), None)


def unwritable_ancestor(path: str | Path) -> Path | None:
    """The nearest existing folder at or above `path` (which need not exist yet), if files
    cannot be created in it; None where they can."""
    path = Path(path)
    existing = next(p for p in (path, *path.parents) if p.exists())
    return None if os.access(existing, os.W_OK | os.X_OK) else existing


def slug(text: str) -> str:
    """A flat file-name part: 'matrix:/tmp/g.json' -> 'matrix_g', 'datasets/smax_3m.vlt:good'
    -> 'smax_3m_good'."""
    parts = []
    for part in text.split(":"):
        path = Path(part)
        parts.append(path.stem if path.suffix in (".json", ".vlt") or "/" in part else part)
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", "_".join(p for p in parts if p)).strip("_")
