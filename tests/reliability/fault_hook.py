"""A ``sitecustomize`` for the reliability tests: faults injected into, and node ids read from, real trials.

Copied as ``sitecustomize.py`` into a folder that goes first on the ``PYTHONPATH`` of a test's Ray
nodes (and so of every Ray worker they start). Only when ``SQUEEZELSTM_FAULT_DIR`` is set does it
do anything: after ``squeezelstm.trainers.loop`` is imported it wraps ``train`` so that each trial

* records which Ray node and process ran it and which epochs it trained
  (``<dir>/ran/<experiment>.<trial>.<pid>-<ns>.json``), and
* suffers the fault ``<dir>/faults.json`` names for it, ``{"<experiment>": {"<number>": mode}}``:
  ``raise`` (an exception), ``oom`` (torch.OutOfMemoryError inside the training loop),
  ``diverge`` (a learning rate that makes the loss explode), ``slow`` (a pause after every epoch
  so a test can act mid-trial).

Nothing here is imported by the product; it only observes and breaks it from the outside.
"""

import importlib.abc
import importlib.util
import os
import sys

_DIR = os.environ.get("SQUEEZELSTM_FAULT_DIR")
_TARGET = "squeezelstm.trainers.loop"


def _patch(loop):
    import dataclasses
    import json
    import time
    from pathlib import Path

    original = loop.train

    def train(config, *, report=None, checkpoint_dir=None, **kwargs):
        if checkpoint_dir is None:
            return original(config, report=report, checkpoint_dir=checkpoint_dir, **kwargs)
        trial_dir = Path(checkpoint_dir)
        experiment, trial = trial_dir.parts[-3], trial_dir.name
        try:
            faults = json.loads((Path(_DIR) / "faults.json").read_text())
        except (OSError, ValueError):
            faults = {}
        mode = faults.get(experiment, {}).get(str(int(trial.split("_")[-1])))
        try:
            import ray

            node = ray.get_runtime_context().get_node_id() if ray.is_initialized() else None
        except Exception:  # noqa: BLE001 - not inside Ray
            node = None
        # one file per attempt (Ray may run several attempts in one reused worker process)
        log = Path(_DIR) / "ran" / f"{experiment}.{trial}.{os.getpid()}-{time.time_ns()}.json"
        log.parent.mkdir(parents=True, exist_ok=True)
        seen = {"node": node, "pid": os.getpid(), "start": time.time(), "epochs": [], "mode": mode}

        def record():
            # atomically: a test polls these files while trials run and must never read a half-written one
            tmp = log.with_name(log.name + ".tmp")
            tmp.write_text(json.dumps(seen))
            os.replace(tmp, log)

        record()

        def observed(epoch, metrics):
            seen["epochs"].append(int(epoch))
            record()
            go_on = True if report is None else report(epoch, metrics)
            if mode == "slow":
                time.sleep(float(faults.get("slow_s", 2.0)))
            return go_on

        if mode == "raise":
            raise RuntimeError(f"injected fault in {experiment} {trial}")
        if mode == "diverge":
            config = dataclasses.replace(config, train=dataclasses.replace(config.train, lr=1.0e4))
        if mode == "oom":
            import torch

            inner = loop._train

            def out_of_memory(*args, **kw):
                raise torch.OutOfMemoryError("injected: CUDA out of memory. Tried to allocate 1.00 TiB")

            loop._train = out_of_memory
            try:
                return original(config, report=observed, checkpoint_dir=checkpoint_dir, **kwargs)
            finally:
                loop._train = inner
        return original(config, report=observed, checkpoint_dir=checkpoint_dir, **kwargs)

    loop.train = train


class _AfterImport(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name != _TARGET:
            return None
        sys.meta_path.remove(self)
        try:
            spec = importlib.util.find_spec(name)
        finally:
            sys.meta_path.insert(0, self)
        if spec is None or spec.loader is None:
            return spec
        run = spec.loader.exec_module

        def exec_module(module):
            run(module)
            _patch(module)

        spec.loader.exec_module = exec_module
        return spec


if _DIR:
    sys.meta_path.insert(0, _AfterImport())
