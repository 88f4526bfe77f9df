"""The two exceptions the engine raises on purpose.

Anything a user can cause (a bad path, a malformed line, a config vLLM cannot serve) becomes an
``EngineError`` whose message names the path, line or field and what to do; the CLI prints it as
one line and exits 2. ``Cancelled`` is how a cancel request ends a run cleanly.
"""


class EngineError(Exception):
    """A problem with the user's input, explained in one line."""


class Cancelled(Exception):
    """``should_cancel()`` returned True; the run stopped without writing an adapter."""
