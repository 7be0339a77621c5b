"""Expected failures: bad input a user can fix, printed as one ``error:`` line instead of a traceback.

``qana`` (cli.main) and every script in ``scripts/`` share this rule, so a wrong path, a run folder with
other settings or a corrupt artifact reads the same everywhere. Anything else (KeyError, TypeError, ...)
is a bug and keeps its traceback; ``qana --debug`` or ``QANA_DEBUG=1`` keeps it for expected failures too.
"""
from __future__ import annotations

import os
import sys
from typing import Callable


def expected_errors() -> tuple[type[BaseException], ...]:
    """The project's error classes plus ValueError and OSError (a missing, unwritable or corrupt file)."""
    from qana_keras.conversion import ConversionError
    from qana_keras.data.checks import DatasetError
    from qana_keras.io import RunFolderError

    return DatasetError, RunFolderError, ConversionError, ValueError, OSError


def one_line(error: BaseException) -> str:
    """The message on one line, whatever a library wrote; a DatasetError keeps its list of problems."""
    from qana_keras.data.checks import DatasetError

    message = str(error) if isinstance(error, DatasetError) else " ".join(str(error).split())
    return message or type(error).__name__


def run_main(main: Callable[..., int | None], argv: list[str] | None = None, debug: bool | None = None) -> int:
    """``main(argv)`` with expected failures as ``error: ...`` on stderr and exit status 2."""
    debug = bool(os.environ.get("QANA_DEBUG")) if debug is None else debug
    try:
        return main(argv) or 0
    except expected_errors() as error:
        if debug:
            raise
        print(f"error: {one_line(error)}", file=sys.stderr)
        return 2
