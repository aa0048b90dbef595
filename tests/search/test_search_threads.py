"""A trial's CPU threads are its share of its node's cores: packed GPU trials never oversubscribe them."""

from __future__ import annotations

import pytest

from squeezelstm.search.backends._threads import trial_threads


@pytest.mark.parametrize("cpus,gpus,nodes,want", [
    (1, 0, [(16, 0)], 1),            # CPU trials: what Ray reserved
    (2.5, 0, [(16, 1)], 2),
    (0.5, 0, [(2, 0)], 1),           # never zero
    (1, 0.25, [(16, 1)], 4),         # four trials on one GPU, 16 cores: 4 threads each
    (1, 0.25, [(16, 2)], 2),         # eight on two GPUs: 2 each
    (1, 0.25, [(8, 4)], 1),          # sixteen GPU slots but 8 cores: CPU-bound packing, 1 each
    (4, 0.25, [(16, 1)], 4),
    (1, 0.25, [(16, 1), (64, 1)], 4),  # every trial gets the same count: the smallest node's share
    (1, 0.25, [(2, 0), (16, 1)], 4),   # a node without a GPU runs none of these trials
    (1, 0.25, [], 1),
])
def test_trial_threads_is_the_nodes_share(cpus, gpus, nodes, want):
    got = trial_threads(cpus, gpus, nodes)
    assert got == want
    for node_cpus, node_gpus in nodes:
        if node_cpus >= cpus and node_gpus >= gpus and gpus > 0:
            packed = min(int(node_cpus // cpus), int(node_gpus / gpus + 1e-9))
            assert packed * got <= max(node_cpus, packed)  # the packed trials' threads fit the node's cores


def test_a_drivers_full_collections_freeze_what_survives_them_and_leaving_unfreezes():
    import gc

    from squeezelstm.search.backends._gc import survivors_frozen

    gc.unfreeze()
    keep = [[i] for i in range(10_000)]  # a driver's long-lived objects
    with survivors_frozen():
        gc.collect(1)
        assert gc.get_freeze_count() == 0  # a young collection freezes nothing
        gc.collect(2)
        frozen = gc.get_freeze_count()
        assert frozen >= len(keep)  # survivors of a full collection are out of later ones
        cycle = []
        cycle.append(cycle)
        del cycle
        assert gc.collect(2) >= 1  # garbage made after the freeze is still collected
    assert gc.get_freeze_count() == 0 and gc.callbacks.count(survivors_frozen) == 0
    del keep
