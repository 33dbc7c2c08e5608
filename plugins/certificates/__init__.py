"""Certificate drivers: the ``local`` generator (the dual CA of :mod:`keramos.framework.pki` kept
in files) and the ``local`` and ``castellan`` certificate bundle stores."""
