"""The fault tests use the functional tests' services: a private RabbitMQ node above all."""

from tests.functional.conftest import private_rabbit, rabbit_url

__all__ = ["private_rabbit", "rabbit_url"]
