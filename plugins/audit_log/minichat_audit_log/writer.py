"""Append-only JSON-lines file with size-based rotation (`audit.jsonl` -> `.1` -> `.2` ...).

One lock serializes writes and rotation: the host runs sync hooks in worker threads, so several audit
events may arrive at once. One process should own a given path.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import BinaryIO


class AuditLogWriter:
    def __init__(self, path: Path, *, rotate_bytes: int, keep_files: int, fsync: bool) -> None:
        self.path = path
        self._rotate_bytes = rotate_bytes
        self._keep_files = keep_files
        self._fsync = fsync
        self._lock = threading.Lock()
        self._handle: BinaryIO | None = None
        self._size = 0

    def write_line(self, line: bytes) -> None:
        with self._lock:
            handle = self._open()
            if self._size and self._size + len(line) > self._rotate_bytes:
                self._rotate()
                handle = self._open()
            handle.write(line)
            handle.flush()
            if self._fsync:
                os.fsync(handle.fileno())
            self._size += len(line)

    def close(self) -> None:
        with self._lock:
            if self._handle is not None:
                self._handle.close()
                self._handle = None

    def rotated_paths(self) -> list[Path]:
        return [self._rotated(i) for i in range(1, self._keep_files + 1) if self._rotated(i).exists()]

    def _open(self) -> BinaryIO:
        # Opened on first write, so starting the host (or `minichat plugins`) creates no file.
        if self._handle is None:
            created = not self.path.exists()
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._handle = self.path.open("ab")
            self._size = self._handle.tell()
            if created:
                self._sync_dir()
        return self._handle

    def _rotated(self, index: int) -> Path:
        return self.path.with_name(f"{self.path.name}.{index}")

    def _rotate(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None
        self._rotated(self._keep_files).unlink(missing_ok=True)
        for index in range(self._keep_files - 1, 0, -1):
            if self._rotated(index).exists():
                os.replace(self._rotated(index), self._rotated(index + 1))
        os.replace(self.path, self._rotated(1))
        self._size = 0
        self._sync_dir()

    def _sync_dir(self) -> None:
        """Make renames and new files durable too when the fsync policy asks for it."""
        if not self._fsync:
            return
        fd = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
