"""Keep dependency deprecation chatter out of command output.

taskflow and oslo.service import eventlet, which warns at import that it is deprecated; Keramos
never uses eventlet (its workers use threads and processes), so the warning tells an operator
nothing they can act on.
"""

from __future__ import annotations

import warnings


def silence_dependency_warnings() -> None:
    """Ignore the eventlet deprecation banner and dependencies' DeprecationWarnings."""
    warnings.filterwarnings("ignore", message=r"\s*Eventlet is deprecated")
    warnings.filterwarnings("ignore", category=DeprecationWarning)
