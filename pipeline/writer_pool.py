"""The item writers as Ray actors: one per codec replica, on that replica's node where it fits.

A chunk's audio then goes from the codec replica to the writer beside it
through the node's object store, and only a receipt comes back to the driver.
"""

from __future__ import annotations

import itertools

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from pipeline.config import JobConfig
from pipeline.object_store import Storage
from pipeline.tokens import Codebooks
from pipeline.writer import ItemWriter
from workers.settings import BarkSettings


class WriterPool:
    def __init__(self, config: JobConfig, storage: Storage, settings: BarkSettings, codec_nodes: list[str | None]) -> None:
        """``codec_nodes``: the node id of each codec replica, in replica order (None: anywhere)."""
        actor = ray.remote(ItemWriter)
        options = config.writer
        # Small arguments, each under Ray's inline limit (max_direct_call_object_size): Ray keeps an
        # actor's inlined constructor arguments for its restarts, but not ones it moved to the object
        # store (ray-project/ray#53727), so a writer restarted on another node would fail to start.
        arguments = (storage, config.output, Codebooks.of(settings), config.quality)
        self.writers = [
            actor.options(
                num_cpus=options.num_cpus,
                max_concurrency=options.max_concurrency,
                max_restarts=options.max_restarts,
                max_task_retries=options.max_task_retries,
                scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=True) if node else "DEFAULT",
            ).remote(*arguments)
            for node in codec_nodes
        ]
        self._any = itertools.cycle(self.writers)

    def ready_refs(self) -> list[ray.ObjectRef]:
        """One ref per writer, ready once that writer has started."""
        return [writer.ready.remote() for writer in self.writers]

    def beside(self, codec_replica: int):
        """The writer made for that codec replica, on its node where it fit."""
        return self.writers[codec_replica]

    def any(self):
        return next(self._any)

    def shutdown(self) -> None:
        for writer in self.writers:
            ray.kill(writer)
