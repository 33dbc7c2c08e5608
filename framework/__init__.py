"""Keramos core: configuration, driver contracts, plugin loading, RPC and the flow runner.

Nothing in this package imports a web framework or an HTTP client; transport code for
oslo.messaging is confined to :mod:`keramos.framework.rpc`, :mod:`.messaging`, :mod:`.client` and
:mod:`.service`, so flows run the same from a cast, the CLI or a test.
"""

__version__ = "0.1.0"

from keramos.framework.warnings_filter import import_dependencies_quietly  # noqa: E402

import_dependencies_quietly()
