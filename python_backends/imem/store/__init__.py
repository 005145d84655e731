"""The turn store: one small interface (base.py), two Qdrant implementations.

* EdgeTurnStore (edge.py): Qdrant Edge, Qdrant's engine in-process; the embedded default.
* ServerTurnStore (server.py): qdrant-client against a Qdrant server or cluster, which several Triton
  replicas can share. Imported only where it is used (qdrant-client is slow to import).
"""

from __future__ import annotations

from pathlib import Path

from imem.config import MemoryConfig
from imem.store.base import DENSE, SPARSE, Search, StoreBusy, StoreUnavailable, TurnStore
from imem.store.edge import EdgeTurnStore

__all__ = ["DENSE", "SPARSE", "EdgeTurnStore", "Search", "StoreBusy", "StoreUnavailable", "TurnStore", "open_store"]


def open_store(config: MemoryConfig, dim: int = 384) -> TurnStore:
    if config.qdrant_url:
        from qdrant_client import QdrantClient

        from imem.store.server import ServerTurnStore

        client = QdrantClient(url=config.qdrant_url, api_key=config.qdrant_api_key or None)
        return ServerTurnStore(client, config.collection, dim)
    data_dir = Path(config.data_dir)
    # A store is created where nothing was (a first start), never in place of one that went missing:
    # an existing data folder without its shard is an unmounted volume or a deleted store.
    create = config.create_store == "yes" or (config.create_store == "auto" and not data_dir.exists())
    return EdgeTurnStore(data_dir / "edge-shard", dim, create=create, lock_wait=config.store_lock_wait_s,
                         flush_each_write=config.flush_each_write, flush_interval_s=config.flush_interval_s,
                         min_free_bytes=config.min_free_disk_mb * 2**20)
