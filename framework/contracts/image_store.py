"""Contract for image stores: where amphora images come from (``keramos.image_store``)."""

from __future__ import annotations

import abc
from collections.abc import Iterator

from keramos.framework.contracts.base import Driver


class ImageStore(Driver):
    """Serves images and their Glance-style properties.

    Properties follow Glance: ``img_signature``, ``img_signature_hash_method``,
    ``img_signature_key_type``, ``img_signature_certificate_uuid`` and, for RSA-PSS,
    ``mask_gen_algorithm`` and ``pss_salt_length``.
    """

    kind = "image_store"

    @abc.abstractmethod
    def properties(self, image_id: str) -> dict[str, str]:
        """Return the image's properties. Raises NotFound for an unknown image."""

    @abc.abstractmethod
    def chunks(self, image_id: str, chunk_size: int = 1 << 20) -> Iterator[bytes]:
        """Stream the image's data in chunks of at most ``chunk_size`` bytes."""
