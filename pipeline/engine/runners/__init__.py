"""Model runners: the engine's per-architecture adapters (slot caches, prefill, graphed decode)."""
