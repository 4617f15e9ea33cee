"""The one exception type users see: its message is a single line that says what to do."""


class BlocktuneError(Exception):
    """A user-facing error. The CLI prints ``str(error)`` alone and exits with status 2."""
