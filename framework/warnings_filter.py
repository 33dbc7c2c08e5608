"""Keep dependency deprecation chatter out of command output and out of plugin authors' tests.

oslo.messaging and futurist import eventlet (and oslo.utils' eventletutils) when they are
imported, and each warns that it is deprecated; oslo.service loads its eventlet backend (and its
deprecated backdoor) unless a process picks another. Keramos never uses eventlet: its workers use
threads and processes. These warnings tell an operator, or the author of a plugin running their
own tests, nothing they can act on, so importing Keramos picks oslo.service's threading backend
and imports those modules with their warnings ignored. Filters are only changed for the
duration of those imports; a process's own filters are left as they were.
"""

from __future__ import annotations

import importlib
import warnings

#: The modules whose first import warns (eventlet's banner, oslo.utils' deprecated
#: eventletutils), imported quietly by :func:`import_dependencies_quietly`: oslo.messaging,
#: futurist and taskflow then find them imported and nothing warns, whoever imports those.
NOISY_MODULES = ("eventlet", "oslo_utils.eventletutils")


def _prefer_threading_backend() -> None:
    """Make oslo.service load its threading backend unless this process already chose one."""
    try:
        from oslo_service import backend
    except ImportError:
        return
    if backend.get_backend_type() is None:
        backend.register_backend_default_hook(lambda: backend.BackendType.THREADING)


def import_dependencies_quietly() -> None:
    """Import the dependencies that warn on import, with those warnings ignored.

    Once imported they are cached, so that later imports by Keramos's modules warn no more.
    """
    _prefer_threading_backend()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"\s*Eventlet is deprecated")
        warnings.filterwarnings("ignore", message="eventletutils module is deprecated")
        for name in NOISY_MODULES:
            try:
                importlib.import_module(name)
            except ImportError:
                continue


def silence_dependency_warnings() -> None:
    """Ignore the eventlet deprecation banner and dependencies' DeprecationWarnings."""
    warnings.filterwarnings("ignore", message=r"\s*Eventlet is deprecated")
    warnings.filterwarnings("ignore", category=DeprecationWarning)
