"""Image drivers: the ``file`` and ``http`` image stores and the ``local`` and ``castellan`` key
managers.

Importing this package imports none of its modules, so that the file store does not pull in the
HTTP store's ``requests``.
"""

from __future__ import annotations

import importlib

from oslo_config import cfg

_OPTION_MODULES = ("file_store", "http_store", "key_managers")


def list_opts() -> list[tuple[str, list[cfg.Opt]]]:
    """Every option of the image drivers, for the sample-config generator."""
    options: list[tuple[str, list[cfg.Opt]]] = []
    for name in _OPTION_MODULES:
        options += importlib.import_module(f"{__name__}.{name}").list_opts()
    return options
