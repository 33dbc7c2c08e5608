"""The ``verify_image`` flow: an amphora image boots only if its signature verifies.

Glance-style signatures (seed 001): the signing certificate is fetched from the key manager by
the uuid in the image's properties and validated against the operator's trusted CAs
(``[image_verification] trusted_ca_file``); the data is streamed once, in chunks, through the
hash into the verified image cache (``[image_cache]``), and the signature is verified over the
digest. The image ends ``active``, or ``killed`` with the reason and no data left behind.

:func:`verification_flow` builds the tasks; ``create_amphora`` and ``failover_amphora`` add the
same flow as their image verification subflow, so that the two cannot drift apart.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from oslo_config import cfg
from taskflow.patterns import linear_flow

from keramos.flows.tasks import images as tasks
from keramos.framework.contracts import Drivers, FlowFactory
from keramos.framework.images.cache import VerifiedImageCache
from keramos.framework.images.certificate_validation import (
    GROUP,
    ConfiguredValidator,
    register_opts,
)
from keramos.framework.schema import IDENTIFIER_PATTERN, Field


def verification_flow(
    name: str,
    drivers: Drivers,
    validator: ConfiguredValidator,
    cache: Callable[[], VerifiedImageCache],
    chunk_size: int,
) -> linear_flow.Flow:
    """The verification tasks: ``image_id`` in, ``image`` (the verified image) out.

    ``validator`` is asked for the trusted CAs when the certificate is validated, and ``cache``
    for the verified image cache when the image is downloaded, not here: a flow built once sees
    the CA or CRL file the operator replaced, and one that boots unsigned images makes no cache.
    """
    return linear_flow.Flow(name).add(
        tasks.MarkImageVerifying(drivers.state_store),
        tasks.GetImageSignature(drivers.image_store),
        tasks.ValidateSigningCertificate(drivers.key_manager, validator),
        tasks.DownloadAndVerifyImage(drivers.image_store, cache, chunk_size),
        tasks.MarkImageActive(drivers.state_store),
    )


class VerifyImage(FlowFactory):
    """Verify an image's signature and signing certificate; mark it active or killed.

    Built once (``reusable``): the trusted CAs, intermediates and CRLs are read again when their
    files change (:class:`ConfiguredValidator`), not at every build.
    """

    name = "verify_image"
    version = "1.0"
    reusable = True
    payload = {"image_id": Field(str, pattern=IDENTIFIER_PATTERN, help="image to verify")}
    resource_field = "image_id"
    result_keys = ("image",)

    def __init__(self, drivers: Drivers, conf: cfg.ConfigOpts) -> None:
        super().__init__(drivers, conf)
        register_opts(conf)
        self.validator = ConfiguredValidator(conf)
        self._cache: VerifiedImageCache | None = None
        self._cache_lock = threading.Lock()

    @property
    def cache(self) -> VerifiedImageCache:
        """The verified image cache, built on first use (shared by every run)."""
        return self._get_cache()

    def _get_cache(self) -> VerifiedImageCache:
        with self._cache_lock:
            if self._cache is None:
                self._cache = VerifiedImageCache(self.conf)
            return self._cache

    def subflow(self, name: str) -> linear_flow.Flow:
        """The verification tasks as a subflow named ``name``, for a flow that boots the image."""
        return verification_flow(
            name, self.drivers, self.validator, self._get_cache, self.conf[GROUP].chunk_size
        )

    def build(self) -> linear_flow.Flow:
        # Refuse at once when no trusted CA is configured or the cache cannot be made: the flow
        # could verify nothing.
        self.validator()
        self._get_cache()
        return self.subflow(self.name)
