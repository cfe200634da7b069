"""The data directory's disk: free space against the configured reserve, checked before an upload is stored."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from flask import Flask, request

from app.errors import InsufficientStorage

_MIB = 1024**2


class DiskGuard:
    """Refuses uploads that would leave the data directory's disk below its free-space reserve."""

    def __init__(self, path: Path, reserve: int) -> None:
        self.path = path
        self.reserve = reserve

    def free(self) -> int | None:
        """Free bytes on the data directory's disk; None if the disk cannot be read."""
        try:
            return shutil.disk_usage(self.path).free
        except OSError:
            return None

    def low(self) -> bool:
        """Whether free space is below the reserve (or cannot be read)."""
        return self._low(self.free())

    def _low(self, free: int | None) -> bool:
        return free is None or free < self.reserve

    def check(self, incoming: int) -> None:
        """InsufficientStorage if storing incoming more bytes would go below the reserve."""
        free = self.free()
        if free is not None and free - incoming < self.reserve:
            need = f" for an upload of {incoming / _MIB:.1f} MiB" if incoming else ""
            raise InsufficientStorage(
                f"the server's disk is nearly full: {free / _MIB:.0f} MiB free, and it keeps "
                f"{self.reserve / _MIB:.0f} MiB in reserve; no room{need}. Try again once space is freed",
                retry_after=60,
            )

    def status(self) -> dict[str, Any]:
        """For /health: free space, the reserve, and whether the reserve is met."""
        free = self.free()
        return {"free_bytes": free, "reserve_bytes": self.reserve, "low": self._low(free)}


def install_disk_guard(app: Flask, disk: DiskGuard) -> None:
    """Refuse a request body the disk has no room for before any of it is read (507, with the reason)."""

    @app.before_request
    def _room_for_the_body() -> None:
        if request.method in ("POST", "PUT", "PATCH"):
            disk.check(request.content_length or 0)
