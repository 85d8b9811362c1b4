"""User-facing errors.

A ``WhetstoneError`` is a mistake the user can fix: the CLI prints its message as
one paragraph and exits non-zero, with no traceback. Anything else that escapes is
a bug in whetstone and keeps its traceback.
"""

from __future__ import annotations

from dataclasses import dataclass


class WhetstoneError(Exception):
    """A problem with the user's input, config, data or environment."""

    exit_code = 2


@dataclass(frozen=True)
class Problem:
    """One thing wrong with one record: where, which field, and why."""

    origin: str  # "path:line"
    field: str | None
    reason: str

    def __str__(self) -> str:
        where = f"{self.origin}: field '{self.field}'" if self.field else self.origin
        return f"{where}: {self.reason}"


class DataError(WhetstoneError):
    """Bad records. Carries every problem found, not just the first."""

    exit_code = 1

    def __init__(self, problems: list[Problem], header: str = "the data has problems", shown: int = 20,
                 fix: str = "Fix these records, or set data.on_error=skip to train on the valid ones."):
        self.problems = list(problems)
        lines = [f"{header} ({len(self.problems)} in all):"]
        lines += [f"  {p}" for p in self.problems[:shown]]
        if len(self.problems) > shown:
            lines.append(f"  ... and {len(self.problems) - shown} more; run `whetstone data check` for the full list")
        lines.append(fix)
        super().__init__("\n".join(lines))
