"""The driver-side brain of a search: what to try next, whether a running trial goes on, what is final.

``SearchController`` is the only place that talks to the main (multi-objective) Optuna study:
``suggest`` samples a valid, in-budget config, ``report`` feeds each epoch to the pruning bridge
and says whether to stop, ``complete`` tells the study the real outcome. It knows nothing of Ray
or MLflow (it speaks trial numbers, which are the Optuna trial numbers), so the same sampler and
pruner code runs in a real Ray search and in a replay of recorded learning curves.

Bookkeeping rules (the traps measured with OptunaSearch + ASHA):

* a pruned trial is told to the study as PRUNED, never as COMPLETE with its half-trained perplexity;
  failed and diverged trials are told as FAIL; only finished trials carry values;
* a configuration over the budget is never launched: it is told as COMPLETE with its exact
  parameter count, a placeholder perplexity (the vocabulary size, what a model that learned
  nothing scores) and a positive Optuna constraint value, so constrained samplers learn the
  boundary and Optuna's ``best_trials`` leave it out; it never becomes a ``TrialRecord``, and
  our front is built from our own finished records only;
* with ``state_dir`` the study lives in an Optuna journal file and the records in a journal of their own
  beside it (``_journal``: an appended line per event, ``records.json`` whole at most every
  ``snapshot_every_s`` and on ``flush``), so a new controller over the same folder resumes: finished
  trials are kept, the sampler keeps its history, numbers continue, unfinished trials keep their numbers.
"""

from __future__ import annotations

import copy
import math
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import optuna
from optuna.trial import TrialState

from squeezelstm.trainers import Config, load_corpus
from squeezelstm.trainers.files import BackgroundWriter

from ..config import SearchConfig
from ..pareto import SIZES, TrialRecord, objective_values, objectives, pareto_front
from ..pruners import PruningBridge
from ..samplers import (ExactSizeEHVI, Observation, Prefetcher, local_draw, make_sampler, one_thread, random_draw,
                        space_dists)
from ..space import model_cost
from ._journal import JournalState, RecordJournal, check_meta, jsonable, plain, shallow
from ._sizes import corpus_vocab_size, record_sizes, size_reference
from ._study import count_trials, quiet_optuna

FINAL_STATUSES = ("finished", "pruned", "failed", "diverged")
_STATE_VERSION = 1  # of controller.json


@dataclass(frozen=True)
class TrialSpec:
    """What a runner needs to launch one trial: the full trainer config and its exact size."""

    number: int
    family: str
    config: dict
    sampled: dict
    params: int
    flops: int
    recurrent_params: int = 0
    size: str = "total"


class SearchController:
    """Samples in-budget configs, decides pruning, and keeps the study and the records honest.

    ``config`` names the space, sampler, pruner (with their options), seed, epochs and the study
    (``config.experiment``). ``vocab_size`` is read from the space's corpus (``load_corpus``) unless
    given; ``measure(config) -> (params, flops)`` defaults to the trainer's exact counters. ``max_retries`` bounds
    how many over-budget samples one ``suggest`` may draw. With ``state_dir`` the study, records and config live there.
    ``prefetch``: ehvi's next proposal is prepared in a background thread (``samplers.Prefetcher``), as Ray runs:
    after a launch while a slot is still free (``slots``), else when a trial ends, so that it sees that result.
    ``snapshot_every_s``: how often at most the records are written whole (between, one line an event);
    ``writer``: by it, in the background (``_journal``), not on the caller's thread.
    """

    @quiet_optuna
    def __init__(
        self,
        config: SearchConfig,
        *,
        state_dir: str | Path | None = None,
        vocab_size: int | None = None,
        measure: Callable[[dict], tuple[int, int]] | None = None,
        max_retries: int = 200,
        prefetch: bool = False,
        snapshot_every_s: float = 30.0,
        writer: BackgroundWriter | None = None,
    ) -> None:
        if not isinstance(config, SearchConfig):
            raise TypeError(f"config must be a SearchConfig, got config={config!r}")
        if not isinstance(max_retries, int) or max_retries < 1:
            raise ValueError(f"max_retries must be a positive integer, got max_retries={max_retries!r}")
        self.config = config
        self.space = config.space
        self.epochs = config.epochs
        self.study_name = config.experiment
        self.max_retries = max_retries
        if vocab_size is None and measure is None:
            vocab_size = corpus_vocab_size(self.space)
        self.vocab_size = vocab_size
        self._measure = measure or (lambda c: model_cost(c, int(vocab_size)))
        self.size = config.size_objective
        self.objectives = objectives(self.size)
        # what an over-budget configuration is told: a model that learned nothing scores the vocabulary size
        self._placeholder_ppl = float(vocab_size) if vocab_size else 1e6
        self.smallest = self.space.check_budget(self._measure)
        # bad pruner or sampler arguments fail here, before anything is written to state_dir
        self.bridge = PruningBridge(config.pruner, study_name=f"{self.study_name}-pruning", **config.pruner_options)
        make_sampler(config.sampler, config.seed, **config.sampler_options)

        self._lock = threading.RLock()
        self._corpus: Any = None
        self._records: dict[int, TrialRecord] = {}
        self._prune_decided: set[int] = set()
        self.rejected = 0
        self.state_dir = Path(state_dir) if state_dir is not None else None
        self._journal: RecordJournal | None = None
        storage: Any = optuna.storages.InMemoryStorage()
        if self.state_dir is not None:
            self.state_dir.mkdir(parents=True, exist_ok=True)
            check_meta(self.state_dir, jsonable(self._meta()))
            self._journal = RecordJournal(self.state_dir, snapshot_every_s=snapshot_every_s, writer=writer)
            state = self._journal.load()
            self._records, self._prune_decided, self.rejected = state.records, state.prune_decided, state.rejected
            backend = optuna.storages.journal.JournalFileBackend(str(self.state_dir / "optuna.journal"))
            storage = optuna.storages.JournalStorage(backend)
        n_before = count_trials(storage, self.study_name)
        # a resumed search must not replay the first run's random draws: mix the trial count into the seed
        seed = config.seed
        sampler_seed = seed if n_before == 0 else int(np.random.SeedSequence([seed, n_before]).generate_state(1)[0] % 2**31)
        self.sampler = make_sampler(config.sampler, sampler_seed, **config.sampler_options)
        self._ehvi: ExactSizeEHVI | None = None
        self._prefetch: Prefetcher | None = None
        self.slots: int | None = None  # trials at once, where the runner knows it (see ``_slot_free``)
        epochs = config.epochs
        if config.sampler == "ehvi":
            dists, families = space_dists(self.space)
            size = self._objective_size  # the chosen size, live after pruning
            smallest = self.smallest[0] if self.size == "total" else self.space.cheapest(
                lambda c: (size(c, *self._measure(c)), 0))[0]
            self._ehvi = ExactSizeEHVI(
                random_draw(self.space, self._measure, epochs, size), dists, families,
                epochs=self.space.trial_epochs(epochs), smallest=smallest,
                ref_params=size_reference(self.space, self.size), seed=sampler_seed,
                neighbour=local_draw(self.space, self._measure, epochs, size), **config.sampler_options,
            )
            self._prefetch = Prefetcher(self._ehvi.propose) if prefetch else None
        self.study = optuna.create_study(
            study_name=self.study_name,
            storage=storage,
            directions=[{"min": "minimize", "max": "maximize"}[direction] for _, direction in self.objectives],
            sampler=self.sampler,
            load_if_exists=True,
        )
        with warnings.catch_warnings():  # named axes in optuna-dashboard; experimental in Optuna since 3.2
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            self.study.set_metric_names([name for name, _ in self.objectives])
        self._reconcile()

    # -- the three calls a runner makes ---------------------------------------------------------

    @quiet_optuna
    def suggest(self) -> TrialSpec:
        """Sample a valid configuration within budget, register it as running and return its spec.

        Over-budget samples are told to the study as infeasible and sampled again, at most
        ``max_retries`` times (then ValueError: the budget is too tight for this sampler).
        """
        if self._prefetch is not None:
            self._prefetch.wait()  # outside the lock: results are handled while the next proposal is computed
        with self._lock:
            for _ in range(self.max_retries):
                if self._prefetch is not None:
                    self.study.enqueue_trial(self._prefetch.take(self._observations)[0])
                elif self._ehvi is not None:
                    with one_thread():
                        values, _, _ = self._ehvi.propose(self._observations())
                    self.study.enqueue_trial(values)
                trial = self.study.ask()
                try:
                    point = self.space.sample(trial, self.epochs)
                    params, flops = self._measure(point.config)
                except BaseException:
                    self.study.tell(trial, state=TrialState.FAIL)
                    raise
                violation = self.space.over_budget(params, flops)
                trial.set_user_attr("params", int(params))
                trial.set_user_attr("flops", int(flops))
                for key, value in violation.items():
                    trial.set_constraint(key, value)  # <= 0 feasible; read by TPE, NSGA-II and GP alike
                sizes = record_sizes(point.config, params, flops, self.vocab_size)
                if self.space.exceeds_budget(params, flops):
                    known = {**sizes, "valid_ppl": self._placeholder_ppl}  # every size: objectives() picks one
                    self.study.tell(trial, values=tuple(float(known[m]) for m, _ in self.objectives))
                    self.rejected += 1
                    self._event()
                    continue
                record = TrialRecord(
                    number=trial.number, family=point.family, params=sizes["params"], flops=sizes["flops"],
                    recurrent_params=sizes["recurrent_params"], size=self.size, dense=sizes["dense"],
                    status="running", config=point.config, sampled=point.sampled, started_at=time.time(),
                )
                self._records[trial.number] = record
                self.bridge.start(trial.number, record.size_value)
                self._event(record)
                if self._prefetch is not None and self._slot_free():
                    self._prefetch.refill(self._observations())
                return self._spec(record)
            raise ValueError(
                f"no configuration within budget (max_params={self.space.max_params}, max_flops={self.space.max_flops}) "
                f"after {self.max_retries} samples of space {self.space.name!r}; raise the budget or narrow the space"
            )

    @quiet_optuna
    def report(self, number: int, epoch: int, metrics: dict) -> bool:
        """Record epoch ``epoch`` of trial ``number``; True means the trial should be pruned now."""
        with self._lock:
            record = self._get(number)
            if record.status != "running":
                return record.status == "pruned"
            entry = {k: plain(v) for k, v in dict(metrics).items()}
            entry["epoch"] = int(epoch)
            # a new list, never one changed in place: ``records_view``'s copies share the old one
            record.history = sorted([h for h in record.history if h.get("epoch") != int(epoch)] + [entry],
                                    key=lambda h: h["epoch"])
            value = metrics.get("valid_ppl")
            decision = number in self._prune_decided
            if value is not None:
                record.valid_ppl = float(value)
                # At its last epoch a trial is fully trained: pruning it then saves no compute and would
                # throw a final value away (told as PRUNED, it never reaches the sampler or the front).
                if int(epoch) < self.space.trial_epochs(self.epochs):
                    decision = self.bridge.report(number, int(epoch), float(value)) or decision
            if decision:
                self._prune_decided.add(number)
            self._event(record)
            return decision

    @quiet_optuna
    def complete(self, number: int, status: str, result: dict | None = None) -> TrialRecord:
        """Close trial ``number`` with its real outcome, tell the study, and return its record.

        ``status`` is finished/pruned/failed/diverged. A trial this controller decided to prune is
        pruned even if the caller says finished (a runner may let it run its last epoch); one that
        failed or diverged stays so (told as FAIL either way). A "finished" trial without a finite
        ``valid_ppl`` is failed: there is no value to tell. Calling again for a closed trial changes nothing.
        """
        if status not in FINAL_STATUSES:
            raise ValueError(f"status must be one of {FINAL_STATUSES}, got status={status!r}")
        with self._lock:
            record = self._get(number)
            if record.status != "running":
                return copy.deepcopy(record)
            result = dict(result or {})
            if number in self._prune_decided and status == "finished":
                status = "pruned"  # its perplexity is a half-trained one: never told as final
            history = result.get("history")
            if isinstance(history, list) and len(history) > len(record.history):
                record.history = [{k: plain(v) for k, v in dict(h).items()} for h in history]
            valid = result.get("valid_ppl", record.valid_ppl)
            valid = None if valid is None else float(valid)
            if status == "finished" and (valid is None or not math.isfinite(valid)):
                status = "failed"
            record.status = status
            record.valid_ppl = valid
            test = result.get("test_ppl")
            record.test_ppl = float(test) if status == "finished" and test is not None else None
            record.ended_at = time.time()
            self._tell(number, status, record)
            self.bridge.finish(number, status, valid)
            self._event(record)
            if self._prefetch is not None and len(self._records) < self.config.trials:
                self._prefetch.refill(self._observations())  # for the slot this trial frees, with its result
            return copy.deepcopy(record)

    # -- views ----------------------------------------------------------------------------------

    def proposal_ready(self) -> bool:
        """False while the next proposal is still being prepared in the background (``suggest`` would wait for it)."""
        return self._prefetch is None or self._prefetch.ready()

    @property
    def proposal_refills(self) -> int:
        """Proposals started in the background so far (0 without ``prefetch``): a replay times refills by it."""
        return 0 if self._prefetch is None else self._prefetch.refills

    def records(self) -> list[TrialRecord]:
        """Copies of every launched trial's record, by number (over-budget samples are not trials)."""
        with self._lock:
            return [copy.deepcopy(self._records[n]) for n in sorted(self._records)]

    def records_view(self) -> list[TrialRecord]:
        """Shallow copies of every record, by number: O(trials) but cheap (no deep copy), for readers that only
        read (the files written in the background); they share config and history, replaced, never changed."""
        with self._lock:
            return [shallow(self._records[n]) for n in sorted(self._records)]

    def record(self, number: int) -> TrialRecord:
        """A copy of trial ``number``'s record: one trial's, so cheap at any size of search."""
        with self._lock:
            return copy.deepcopy(self._get(number))

    def n_records(self) -> int:
        """How many trials were launched (``len(records())`` without copying them)."""
        with self._lock:
            return len(self._records)

    def front(self) -> list[TrialRecord]:
        """The Pareto front of the finished trials (params, valid_ppl), by parameter count."""
        return pareto_front(self.records())

    @property
    def corpus(self) -> Any:
        """The space's corpus (loaded once through the trainer's per-process cache): vocabulary, unigram and optimal perplexity."""
        if self._corpus is None:
            self._corpus = load_corpus(Config.from_dict({"data": copy.deepcopy(self.space.fixed.get("data", {}))}).data)
        return self._corpus

    def spec(self, number: int) -> TrialSpec:
        """The spec of an already suggested trial (for a runner resuming it)."""
        with self._lock:
            return self._spec(self._get(number))

    def unfinished(self) -> list[TrialSpec]:
        """Specs of the trials that were launched but never completed (to continue on resume)."""
        with self._lock:
            return [self._spec(r) for n, r in sorted(self._records.items()) if r.status == "running"]

    def counts(self) -> dict[str, int]:
        """Number of trials per status, plus ``rejected`` over-budget samples."""
        with self._lock:
            out = {s: 0 for s in ("running",) + FINAL_STATUSES}
            for r in self._records.values():
                out[r.status] += 1
            out["rejected"] = self.rejected
            return out

    # -- internals ------------------------------------------------------------------------------

    def _observations(self) -> list[Observation]:
        """Every launched trial as the EHVI proposer sees it: sampled values, size, status, curve."""
        trials = self.study.get_trials(deepcopy=False)
        out = []
        for number in sorted(self._records):
            r = self._records[number]
            curve = [(int(h["epoch"]), float(h["valid_ppl"])) for h in r.history if h.get("valid_ppl") is not None]
            out.append(Observation(values=trials[number].params, family=r.family, params=r.size_value, status=r.status,
                                   curve=curve, number=number))
        return out

    def _slot_free(self) -> bool:
        """Whether a trial slot is still free after a launch (``slots``, None: assume so), so a proposal
        prepared now is wanted at once; else the next one is prepared when a trial ends, with its result."""
        if len(self._records) >= self.config.trials:
            return False
        return self.slots is None or sum(r.status == "running" for r in self._records.values()) < self.slots

    def _objective_size(self, config: dict, params: int, flops: int) -> int:  # what EHVI models, exact
        return int(record_sizes(config, params, flops, self.vocab_size)[SIZES[self.size]])

    def _get(self, number: int) -> TrialRecord:
        record = self._records.get(number)
        if record is None:
            raise ValueError(f"unknown trial number={number!r}: this controller never suggested it")
        return record

    def _spec(self, record: TrialRecord) -> TrialSpec:
        return TrialSpec(
            number=record.number, family=record.family, config=copy.deepcopy(record.config),
            sampled=dict(record.sampled), params=record.params, flops=record.flops,
            recurrent_params=record.recurrent_params, size=record.size,
        )

    def _tell(self, number: int, status: str, record: TrialRecord) -> None:
        # idempotent: after a crash between tell and save the study may already know the outcome
        if self.study.get_trials(deepcopy=False)[number].state != TrialState.RUNNING:
            return
        if status == "finished":
            self.study.tell(number, values=tuple(float(v) for v in objective_values(record)))
        elif status == "pruned":
            self.study.tell(number, state=TrialState.PRUNED)
        else:
            self.study.tell(number, state=TrialState.FAIL)

    def _reconcile(self) -> None:
        """After loading: close study trials the records do not know (a crash mid-suggest), tell closed records, rebuild the bridge."""
        for trial in self.study.get_trials(deepcopy=False):
            record = self._records.get(trial.number)
            if trial.state == TrialState.RUNNING:
                if record is None:
                    self.study.tell(trial.number, state=TrialState.FAIL)
                elif record.status != "running":
                    self._tell(trial.number, record.status, record)
        for number in sorted(self._records):
            record = self._records[number]
            self.bridge.start(number, record.size_value)
            for entry in record.history:
                if entry.get("valid_ppl") is not None:
                    self.bridge.report(number, int(entry["epoch"]), float(entry["valid_ppl"]))
            if record.status != "running":
                self.bridge.finish(number, record.status, record.valid_ppl)

    def _meta(self) -> dict:  # the latest session's config rebuilds the search; the keys before it never change
        return {"version": _STATE_VERSION, "space": self.space.to_dict(), "study_name": self.study_name,
                "epochs": self.epochs, "size": self.size, "config": self.config.to_dict()}

    def _event(self, record: TrialRecord | None = None) -> None:
        """One event into the journal: ``record``'s new state (with its prune decision) and the rejected count."""
        if self._journal is None:
            return
        event: dict[str, Any] = {"rejected": self.rejected}
        if record is not None:
            event["record"] = record.to_dict()
            event["prune"] = record.number in self._prune_decided
        self._journal.append(event, self._state)

    def _state(self) -> JournalState:
        return JournalState(self._records, self._prune_decided, self.rejected)

    def flush(self) -> None:
        """Write the whole records snapshot now (the end of a search, an interruption); between snapshots
        the journal's log holds the events, so this is for readers of ``records.json``, not for resuming."""
        with self._lock:
            if self._journal is not None:
                self._journal.snapshot(self._state())


__all__ = ["SearchController", "TrialSpec"]
