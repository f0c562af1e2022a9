"""The child side of the many-process lease test, in a module of its own so that each spawned
process imports only the lease (not torch, Ray and the job) before it stands at the barrier."""

from __future__ import annotations

import time

from pipeline.config import LeaseConfig
from pipeline.lease import LeaseHeld, take_lease
from pipeline.manifest import new_run_id
from pipeline.object_store import LocalStore

HOLD_S = 3.0  # long enough that every other taker tries while the winner holds it


def take_in_process(output: str, start, results) -> None:
    start.wait()  # every taker (and the test) has imported everything and stands at the line
    try:
        lease = take_lease(LocalStore(output), new_run_id(), LeaseConfig())
    except LeaseHeld:
        results.put("refused")
        return
    results.put("won")
    time.sleep(HOLD_S)
    lease.release()
