"""The two exceptions the engine raises on purpose.

Anything a user can cause (a bad path, a malformed line, a config vLLM cannot serve) becomes an
``EngineError`` whose message names the path, line or field and what to do; the CLI prints it as
one line and exits 2. ``Cancelled`` is how a cancel request ends a run cleanly.
"""


class EngineError(Exception):
    """A problem with the user's input, explained in one line."""


class Cancelled(Exception):
    """``should_cancel()`` returned True; the run stopped without writing an adapter."""


def first_line(error: BaseException) -> str:
    """A library error in one line (state_dict errors list every tensor on lines of their own)."""
    message = str(error).strip()
    return message.splitlines()[0].rstrip(":. \t") if message else type(error).__name__
