"""easyfaas queue plugin: accepted async calls on a NATS JetStream work-queue stream, leased by
any engine node through one pull consumer; records, dead letters and keys in key-value buckets."""

from __future__ import annotations

from easyfaas_queue_nats.queue import NatsQueue

__all__ = ["NatsQueue"]
