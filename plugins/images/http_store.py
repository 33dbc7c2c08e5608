"""An image store that streams images from a Glance image API v2 over HTTP(S)
(``keramos.image_store: http``).

Properties come from ``GET {url}/v2/images/{image_id}`` (custom properties such as
``img_signature`` are top-level fields there) and data from ``GET {url}/v2/images/{image_id}/file``,
streamed in chunks. Any server that answers these two paths the way Glance does will serve.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import requests
from oslo_config import cfg

from keramos.framework.contracts import ImageStore
from keramos.framework.errors import ConfigError, DriverError, NotFound
from keramos.plugins.images.file_store import check_image_id, glance_properties

GROUP = "http_image_store"

http_image_store_opts = [
    cfg.URIOpt(
        "url",
        schemes=["http", "https"],
        help="Base URL of the Glance image API (e.g. https://glance.example.org:9292); the "
        "store reads <url>/v2/images/<id> and <url>/v2/images/<id>/file.",
    ),
    cfg.FloatOpt(
        "timeout",
        default=30.0,
        min=0.1,
        help="Seconds to wait for the server to connect or to send the next bytes.",
    ),
    cfg.StrOpt(
        "ca_file",
        help="PEM bundle of CA certificates the server's TLS certificate is checked against "
        "(default: the system's).",
    ),
    cfg.StrOpt(
        "token",
        secret=True,
        help="Keystone token sent as X-Auth-Token, if the server requires one.",
    ),
]


def list_opts() -> list[tuple[str, list[cfg.Opt]]]:
    """The options of this driver, for the sample-config generator."""
    return [(GROUP, list(http_image_store_opts))]


class HttpImageStore(ImageStore):
    """Streams images and their properties from a Glance-compatible HTTP(S) server."""

    def __init__(self, conf: cfg.ConfigOpts) -> None:
        super().__init__(conf)
        conf.register_opts(http_image_store_opts, group=GROUP)
        group = conf[GROUP]
        if not group.url:
            raise ConfigError(f"[{GROUP}] url is not set: the http image store needs a Glance URL")
        self.url = group.url.rstrip("/")
        self.timeout = group.timeout
        self._session = requests.Session()
        self._session.headers["Accept"] = "application/json"
        if group.token:
            self._session.headers["X-Auth-Token"] = group.token
        self._session.verify = group.ca_file or True

    def _get(self, image_id: str, suffix: str = "", **kwargs: Any) -> requests.Response:
        url = f"{self.url}/v2/images/{check_image_id(image_id)}{suffix}"
        try:
            response = self._session.get(url, timeout=self.timeout, **kwargs)
        except requests.RequestException as error:
            raise DriverError(f"GET {url}: {error}", retryable=True) from error
        if response.status_code == 404:
            response.close()
            raise NotFound(f"no image {image_id} at {self.url}")
        if response.status_code >= 400:
            response.close()
            raise DriverError(
                f"GET {url}: HTTP {response.status_code} {response.reason}",
                retryable=response.status_code >= 500 or response.status_code == 429,
            )
        return response

    def properties(self, image_id: str) -> dict[str, str]:
        response = self._get(image_id)
        try:
            document = response.json()
        except ValueError as error:
            raise DriverError(f"image {image_id}: the server did not answer JSON") from error
        if not isinstance(document, dict):
            raise DriverError(f"image {image_id}: the server's answer is not a JSON object")
        return glance_properties(document)

    def chunks(self, image_id: str, chunk_size: int = 1 << 20) -> Iterator[bytes]:
        response = self._get(image_id, "/file", stream=True)
        return self._stream(image_id, response, chunk_size)

    @staticmethod
    def _stream(image_id: str, response: requests.Response, chunk_size: int) -> Iterator[bytes]:
        with response:
            try:
                yield from response.iter_content(chunk_size)
            except requests.RequestException as error:
                raise DriverError(
                    f"image {image_id}: download interrupted: {error}", retryable=True
                ) from error

    def close(self) -> None:
        self._session.close()
