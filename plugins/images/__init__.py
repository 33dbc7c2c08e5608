"""Image verification: Glance-style signatures, certificate validation, image stores, cache."""
