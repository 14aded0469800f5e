"""Errors that reach users as one clear paragraph (the CLI prints them without a traceback)."""

from __future__ import annotations

from pathlib import Path


class CagoflowError(Exception):
    """Base class of errors caused by user input or a failed engine, not by a bug."""


class InputError(CagoflowError):
    """Bad user input: names the file, the field path (if any) and what was expected."""

    def __init__(self, message: str, *, file: str | Path | None = None, field: str | None = None):
        self.file = None if file is None else str(file)
        self.field = field
        self.detail = message
        where = []
        if self.file:
            where.append(f"in {self.file}")
        if field:
            where.append(f"at field '{field}'")
        prefix = (" ".join(where) + ": ") if where else ""
        super().__init__(prefix + message)
