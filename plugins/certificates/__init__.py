"""Certificates: the controller's dual CA (``local`` generator) and certificate bundle stores.

``ca`` holds the CA core on ``cryptography``; ``generator`` the ``keramos.cert_generator``
driver; ``local_store`` and ``castellan_store`` the ``keramos.cert_manager`` drivers; ``errors``
the errors they raise; ``keys`` key and PEM handling; ``files`` the atomic 0600 file writes.
"""
