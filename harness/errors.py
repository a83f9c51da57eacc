"""One error type for everything the user can fix.

Nightly jobs read one line, not a traceback: ``<file>: <field>: <what is wrong and what to do>``.
"""

from __future__ import annotations


class HarnessError(Exception):
    """A user-facing problem with an input file, a field in it, or the environment."""

    def __init__(self, file: object, field: str | None, message: str):
        self.file = str(file) if file is not None else None
        self.field = field
        self.message = message
        super().__init__(self.line())

    def line(self) -> str:
        parts = [p for p in (self.file, self.field) if p]
        return ": ".join(parts + [self.message])


class Unreproducible(HarnessError):
    """The preview exists but ai-toolkit's own inputs cannot be reconstructed (not a parity failure)."""


class NonFiniteError(HarnessError):
    """A render produced NaN/Inf; ``expert`` ("high" or "low") says whose output it first appeared in, so the
    result can name that expert's LoRA file instead of parsing the message."""

    def __init__(self, file: object, field: str | None, message: str, expert: str | None = None):
        super().__init__(file, field, message)
        self.expert = expert
