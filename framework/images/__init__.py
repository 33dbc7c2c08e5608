"""Image verification building blocks: Glance-style signatures, signing certificate validation
and the verified image cache.

The ``verify_image`` flow and the image drivers both use them. Importing this package imports
none of its modules.
"""

from __future__ import annotations

import importlib

from oslo_config import cfg

_OPTION_MODULES = ("certificate_validation", "cache")


def list_opts() -> list[tuple[str, list[cfg.Opt]]]:
    """The options of image verification and the verified cache, for the sample config."""
    options: list[tuple[str, list[cfg.Opt]]] = []
    for name in _OPTION_MODULES:
        options += importlib.import_module(f"{__name__}.{name}").list_opts()
    return options
