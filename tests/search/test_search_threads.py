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
