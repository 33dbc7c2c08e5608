"""Image verification: Glance-style signatures, certificate validation, image stores, cache.

Importing this package imports none of its modules: flows use :mod:`.signature`, :mod:`.cache` and
:mod:`.certificate_validation` without pulling in the HTTP store's ``requests``.
"""

from __future__ import annotations

import importlib

from oslo_config import cfg

_OPTION_MODULES = ("certificate_validation", "cache", "file_store", "http_store", "key_managers")


def list_opts() -> list[tuple[str, list[cfg.Opt]]]:
    """Every option of the image plugins, for the sample-config generator."""
    options: list[tuple[str, list[cfg.Opt]]] = []
    for name in _OPTION_MODULES:
        options += importlib.import_module(f"{__name__}.{name}").list_opts()
    return options
