"""An image store on a local directory (``keramos.image_store: file``).

Each image is two files: ``<image_id>`` (the data) and ``<image_id>.json`` (its metadata, shaped
as Glance's image API v2 returns an image: ``size``, ``checksum`` (MD5), ``os_hash_algo`` and
``os_hash_value`` (SHA-512), and the signature properties at the top level). :meth:`add`
writes both the way Glance's upload does.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
from collections.abc import Iterator, Mapping
from typing import Any, BinaryIO

from oslo_config import cfg

from keramos.framework.contracts import ImageStore
from keramos.framework.errors import ConfigError, DriverError, NotFound
from keramos.framework.files import PUBLIC_MODE, atomic_file, write_atomic
from keramos.framework.schema import IDENTIFIER_PATTERN

GROUP = "file_image_store"
_IMAGE_ID = re.compile(IDENTIFIER_PATTERN)

file_image_store_opts = [
    cfg.StrOpt(
        "directory",
        default="$state_path/images",
        help="Directory holding the images (<image_id>) and their metadata (<image_id>.json).",
    ),
]


def list_opts() -> list[tuple[str, list[cfg.Opt]]]:
    """The options of this driver, for the sample-config generator."""
    return [(GROUP, list(file_image_store_opts))]


def glance_properties(document: Mapping[str, Any]) -> dict[str, str]:
    """The scalar fields of a Glance image document, as strings (``None`` values dropped)."""
    return {
        str(name): str(value)
        for name, value in document.items()
        if isinstance(value, (str, int, float)) and not isinstance(value, bool)
    }


def check_image_id(image_id: str) -> str:
    """Return ``image_id`` if it is safe in a file name or URL path, else raise NotFound."""
    if not isinstance(image_id, str) or not _IMAGE_ID.fullmatch(image_id):
        raise NotFound(f"no image {image_id!r}: not a valid image id")
    return image_id


class FileImageStore(ImageStore):
    """Images and their Glance-style metadata in one local directory."""

    def __init__(self, conf: cfg.ConfigOpts) -> None:
        super().__init__(conf)
        conf.register_opts(file_image_store_opts, group=GROUP)
        self.directory = conf[GROUP].directory
        try:
            os.makedirs(self.directory, exist_ok=True)
        except OSError as error:
            raise ConfigError(f"[{GROUP}] directory {self.directory}: {error.strerror}") from error

    def data_path(self, image_id: str) -> str:
        """Where the image's data is kept."""
        return os.path.join(self.directory, check_image_id(image_id))

    def _metadata_path(self, image_id: str) -> str:
        return self.data_path(image_id) + ".json"

    def properties(self, image_id: str) -> dict[str, str]:
        try:
            with open(self._metadata_path(image_id), encoding="utf-8") as metadata_file:
                document = json.load(metadata_file)
        except FileNotFoundError:
            raise NotFound(f"no image {image_id}") from None
        except (OSError, ValueError) as error:
            raise DriverError(f"image {image_id}: unreadable metadata: {error}") from error
        if not isinstance(document, dict):
            raise DriverError(f"image {image_id}: metadata is not a JSON object")
        return glance_properties({**document, "id": image_id})

    def chunks(self, image_id: str, chunk_size: int = 1 << 20) -> Iterator[bytes]:
        try:
            data_file = open(self.data_path(image_id), "rb")  # noqa: SIM115 - closed below
        except FileNotFoundError:
            raise NotFound(f"no data for image {image_id}") from None
        return self._read(data_file, chunk_size)

    @staticmethod
    def _read(data_file: BinaryIO, chunk_size: int) -> Iterator[bytes]:
        with data_file:
            while chunk := data_file.read(chunk_size):
                yield chunk

    def add(
        self, image_id: str, source: BinaryIO, properties: Mapping[str, Any] | None = None
    ) -> dict[str, Any]:
        """Store an image read from ``source`` with ``properties``; return its metadata.

        Like a Glance upload, records ``size``, ``checksum`` (MD5) and the SHA-512
        ``os_hash_value`` of the data. Nothing is left behind if writing fails.
        """
        path = self.data_path(image_id)
        md5, sha512, size = hashlib.md5(usedforsecurity=False), hashlib.sha512(), 0
        try:
            with atomic_file(path) as target:
                while chunk := source.read(1 << 20):
                    md5.update(chunk)
                    sha512.update(chunk)
                    size += len(chunk)
                    target.write(chunk)
            document = {
                **dict(properties or {}),
                "id": image_id,
                "status": "active",
                "size": size,
                "checksum": md5.hexdigest(),
                "os_hash_algo": "sha512",
                "os_hash_value": sha512.hexdigest(),
            }
            write_atomic(self._metadata_path(image_id), json.dumps(document).encode(), PUBLIC_MODE)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
            raise
        return document

    def add_file(
        self, image_id: str, source_path: str, properties: Mapping[str, Any] | None = None
    ) -> dict[str, Any]:
        """:meth:`add` the file at ``source_path``."""
        with open(source_path, "rb") as source:
            return self.add(image_id, source, properties)

    def delete(self, image_id: str) -> None:
        """Remove an image and its metadata; an unknown image is not an error."""
        for path in (self._metadata_path(image_id), self.data_path(image_id)):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
