"""The ``verify_image`` flow: an amphora image boots only if its signature verifies.

Glance-style signatures (seed 001): the signing certificate is fetched from the key manager by
the uuid in the image's properties and validated against the operator's trusted CAs
(``[image_verification] trusted_ca_file``); the data is streamed once, in chunks, through the
hash into the verified image cache (``[image_cache]``), and the signature is verified over the
digest. The image ends ``active``, or ``killed`` with the reason and no data left behind.
"""

from __future__ import annotations

import threading

from oslo_config import cfg
from taskflow.patterns import linear_flow

from keramos.flows.tasks import images as tasks
from keramos.framework.contracts import FlowFactory
from keramos.framework.drivers import Drivers
from keramos.framework.images.cache import VerifiedImageCache
from keramos.framework.images.certificate_validation import GROUP, CertificateValidator, register_opts
from keramos.framework.schema import IDENTIFIER_PATTERN, Field


class VerifyImage(FlowFactory):
    """Verify an image's signature and signing certificate; mark it active or killed."""

    name = "verify_image"
    version = "1.0"
    payload = {"image_id": Field(str, pattern=IDENTIFIER_PATTERN, help="image to verify")}
    resource_field = "image_id"
    result_keys = ("image",)

    def __init__(self, drivers: Drivers, conf: cfg.ConfigOpts) -> None:
        super().__init__(drivers, conf)
        register_opts(conf)
        self._cache: VerifiedImageCache | None = None
        self._cache_lock = threading.Lock()

    @property
    def cache(self) -> VerifiedImageCache:
        """The verified image cache, built on first use (shared by every run)."""
        with self._cache_lock:
            if self._cache is None:
                self._cache = VerifiedImageCache(self.conf)
            return self._cache

    def build(self) -> linear_flow.Flow:
        drivers = self.drivers
        # Read for every run, so that a CA or CRL file the operator replaced takes effect.
        validator = CertificateValidator.from_conf(self.conf)
        return linear_flow.Flow(self.name).add(
            tasks.MarkImageVerifying(drivers.state_store),
            tasks.GetImageSignature(drivers.image_store),
            tasks.ValidateSigningCertificate(drivers.key_manager, validator),
            tasks.DownloadAndVerifyImage(
                drivers.image_store, self.cache, self.conf[GROUP].chunk_size
            ),
            tasks.MarkImageActive(drivers.state_store),
        )
