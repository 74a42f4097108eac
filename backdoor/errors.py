"""The one exit status of a user error and the exit that carries its one-line message (CLIs at every layer)."""
from __future__ import annotations

# The one exit status of a user error (bad name, number, file or device), as argparse uses for bad arguments.
USER_ERROR = 2


class UserExit(SystemExit):
    """Exit with status USER_ERROR; str() is the one-line message (already printed to stderr)."""

    def __init__(self, message: str) -> None:
        super().__init__(USER_ERROR)
        self.message = message

    def __str__(self) -> str:
        return self.message
