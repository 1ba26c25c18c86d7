"""The package's user-facing error (a module of its own: every module may raise it without importing another's logic)."""


class TibalanceError(Exception):
    """A user-facing error: its message is one line naming the file, class or key at fault."""
