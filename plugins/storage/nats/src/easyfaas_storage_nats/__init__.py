"""easyfaas storage plugin: the function registry in a NATS JetStream key-value bucket, code in
its object store, shared by every engine node that names the same servers and bucket."""

from __future__ import annotations

from easyfaas_storage_nats.store import NatsStore

__all__ = ["NatsStore"]
