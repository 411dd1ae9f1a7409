"""The error for an optional dependency (a pip extra of atrous) that is not installed.

Export, quantization, the exported-graph runtimes and the demo import their packages only when
used. When one is missing, the user's fix is one ``pip install`` line, so the error carries it
and the command layer prints it as a usage error (exit status 2) without a traceback. A plain
`ImportError` elsewhere stays a bug with its traceback.
"""

from __future__ import annotations

__all__ = ["MissingExtraError"]


class MissingExtraError(ModuleNotFoundError):
    """An optional package is not installed; the message says which extra to install.

    A `ModuleNotFoundError` (and so an `ImportError`), so that code catching those still does.

    Args:
        message: what needs the package, ending in the ``pip install 'atrous[...]'`` line.
        name: the missing package (`ImportError.name`).
    """

    def __init__(self, message: str, *, name: str | None = None) -> None:
        super().__init__(message, name=name)
