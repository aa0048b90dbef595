"""How many CPU threads a trial's torch may use: its share of its node's cores.

Ray reserves ``cpus_per_trial`` CPUs for a trial but does not stop torch from starting one thread per
core; trials packed on a node then oversubscribe it. A CPU trial's share is what it reserved. A trial
on a fractional GPU (``--gpus-per-trial 0.25``) is packed by the GPU instead: four such trials share a
GPU, and a node runs ``min(cpus // cpus_per_trial, gpus // gpus_per_trial)`` of them, so each gets
that fraction of the node's cores (16 cores, 1 GPU, 0.25 a trial: 4 threads each, 16 in all).
"""

from __future__ import annotations

import math


def trial_threads(cpus_per_trial: float, gpus_per_trial: float, nodes: list[tuple[float, float]]) -> int:
    """Threads for every trial of a search: the smallest share over ``nodes`` ((CPUs, GPUs) of each
    node that can run a trial); ``max(1, floor(cpus_per_trial))`` where no node tells more."""
    reserved = max(1, int(cpus_per_trial))
    if gpus_per_trial <= 0:
        return reserved
    shares = []
    for cpus, gpus in nodes:
        if cpus < cpus_per_trial or gpus < gpus_per_trial:
            continue  # no trial runs there
        per_node = min(math.floor(cpus / cpus_per_trial), math.floor(gpus / gpus_per_trial + 1e-9))
        shares.append(max(1, int(cpus) // max(1, per_node)))
    return max(reserved, min(shares)) if shares else reserved


def ray_nodes() -> list[tuple[float, float]]:
    """(CPUs, GPUs) of each live node of the connected Ray cluster."""
    import ray

    return [(float(n["Resources"].get("CPU", 0)), float(n["Resources"].get("GPU", 0)))
            for n in ray.nodes() if n.get("Alive", True)]
