"""The fault tests use the functional tests' services: private RabbitMQ node and Redis, and a
PostgreSQL database of their own."""

from tests.functional.conftest import pg_url, private_rabbit, rabbit_url, redis_server

__all__ = ["pg_url", "private_rabbit", "rabbit_url", "redis_server"]
