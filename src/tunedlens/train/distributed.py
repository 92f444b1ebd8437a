"""Data-parallel training with torch.distributed: lens replicated, data sharded.

Under ``torchrun`` each process takes its share of every global micro-batch, and gradients are
averaged with one all-reduce (one flat buffer) per optimizer step (:class:`tunedlens.distributed.World`);
a model too big for one device has its decoder blocks sharded (:mod:`tunedlens.sharding`:
:func:`~tunedlens.sharding.shard_blocks` for a loaded model, :func:`~tunedlens.sharding.load_sharded`
to load one shard by shard).
"""

from __future__ import annotations

from tunedlens.sharding import shard_blocks

__all__ = ["shard_blocks"]
