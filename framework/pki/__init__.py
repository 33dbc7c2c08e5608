"""The controller's public key infrastructure: the dual CA (``ca``), keys, PEM and CSR checks
(``keys``), the errors they raise (``errors``) and the ``[certificates]`` options (``options``).

The certificate drivers, the certificate flows and the CLI all build on it.
"""
