"""One exception type for user-facing failures: what went wrong, and what to do about it."""

from __future__ import annotations


class EmkitError(Exception):
    """A problem the user can fix. The CLI prints it as one line (no traceback unless --debug)."""

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} ({self.hint})" if self.hint else self.message


class StaleFolderError(EmkitError):
    """A folder holds work (a capture, a checkpoint) made with other settings; clearing it lets the work restart."""
