"""The one exception type for errors a user can cause (DESIGN.md, Conventions)."""


class ReslabError(Exception):
    """A user-facing error: bad name, bad flag, missing or corrupt data or weights.

    The message says what went wrong and what to do; the CLI prints it on one line
    and exits non-zero.
    """
