"""``squeezelstm search --address`` on a real multi-node Ray cluster with a real MLflow server, and the
faults a long search meets: trials that raise, run out of memory or diverge, the MLflow server going
away for a while, a worker node dying mid-trial.

One module-scoped cluster (a head and a worker node, 1 CPU each, started with
``ray.cluster_utils.Cluster`` as separate raylet processes on 127.0.0.1) and one ``mlflow server``
(SQLite backend, artifacts proxied by the server) serve every test here; each search is the real
command in a subprocess. Faults are injected from outside the product by ``fault_hook.py``
(installed as the nodes' ``sitecustomize``), which also records which node ran each trial.
Tests run in file order: the node-kill test is last because it takes a node away.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

SPACE = (Path(__file__).parents[1] / "data" / "tiny_cluster.yaml").read_text()  # a tiny space for fast Ray searches


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MlflowServer:
    """A real ``mlflow server`` on localhost that can be stopped and started again on the same port."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.port = _free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 150) -> None:
        self.launch()
        self.wait(timeout)

    def launch(self) -> None:
        log = (self.root / "server.log").open("a")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(self.port),
             "--workers", "1", "--backend-store-uri", f"sqlite:///{self.root / 'mlflow.db'}",
             "--serve-artifacts", "--artifacts-destination", str(self.root / "artifacts")],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=self.root,
            env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"})
        log.close()

    def wait(self, timeout: float = 150) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                with urllib.request.urlopen(f"{self.uri}/health", timeout=2):
                    return
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"mlflow server did not start:\n{(self.root / 'server.log').read_text()[-3000:]}")
                time.sleep(0.3)

    def stop(self) -> None:
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        except ProcessLookupError:
            pass
        self.proc = None


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """The shared cluster, server and fault hook: yields a namespace the tests use."""
    pytest.importorskip("ray")
    from ray.cluster_utils import Cluster

    root = tmp_path_factory.mktemp("cluster")
    hook = root / "hook"
    hook.mkdir()
    shutil.copy(Path(__file__).with_name("fault_hook.py"), hook / "sitecustomize.py")
    faults = root / "faults"
    (faults / "ran").mkdir(parents=True)
    (faults / "faults.json").write_text("{}")
    # A private Ray temp dir (short: it holds unix sockets): Cluster writes "the current cluster"
    # there, so no other test's plain ray.init() on this machine joins this cluster by accident.
    ray_tmp = tempfile.mkdtemp(prefix="sqr", dir="/tmp")
    saved = {k: os.environ.get(k) for k in ("RAY_TMPDIR", "PYTHONPATH", "SQUEEZELSTM_FAULT_DIR")}
    os.environ["RAY_TMPDIR"] = ray_tmp
    os.environ["PYTHONPATH"] = os.pathsep.join([str(hook)] + ([saved["PYTHONPATH"]] if saved["PYTHONPATH"] else []))
    os.environ["SQUEEZELSTM_FAULT_DIR"] = str(faults)
    server = MlflowServer(root)
    cluster = None
    try:
        server.launch()  # imports for a while: start it first, the cluster comes up meanwhile
        cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
        worker = cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        server.wait()
        yield _Env(root=root, cluster=cluster, worker=worker, server=server, faults=faults)
    finally:
        server.stop()
        if cluster is not None:
            cluster.shutdown()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        shutil.rmtree(ray_tmp, ignore_errors=True)


class _Env:
    def __init__(self, **kw) -> None:
        self.__dict__.update(kw)

    def space(self, epochs: int) -> Path:
        path = self.root / f"space{epochs}.yaml"
        path.write_text(SPACE.replace("EPOCHS", str(epochs)))
        return path

    def set_faults(self, experiment: str, faults: dict, slow_s: float = 2.0) -> None:
        data = json.loads((self.faults / "faults.json").read_text())
        data[experiment] = {str(k): v for k, v in faults.items()}
        data["slow_s"] = slow_s
        tmp = self.faults / "faults.json.tmp"  # atomically: the hook reads it from running trials
        tmp.write_text(json.dumps(data))
        os.replace(tmp, self.faults / "faults.json")

    def command(self, experiment: str, *, trials: int, epochs: int, max_failures: int = 0,
                extra: tuple = ()) -> list[str]:
        script = Path(sys.executable).with_name("squeezelstm")
        return [str(script), "search", "--space", str(self.space(epochs)), "--trials", str(trials),
                "--experiment", experiment, "--address", self.cluster.address, "--storage", str(self.storage),
                "--tracking-uri", self.server.uri, "--cpus-per-trial", "1", "--max-concurrent", "2",
                "--sampler", "random", "--pruner", "none", "--max-failures", str(max_failures), "--json", *extra]

    @property
    def storage(self) -> Path:
        return self.root / "storage"

    def search(self, experiment: str, **kw) -> subprocess.CompletedProcess:
        run = subprocess.run(self.command(experiment, **kw), capture_output=True, text=True, cwd=self.root,
                             timeout=400)
        assert run.returncode == 0, run.stderr[-4000:]
        return run

    def ran(self, experiment: str) -> dict[int, list[dict]]:
        """Trial number -> the attempts that ran it (node, pid, epochs trained), oldest first."""
        out: dict[int, list[dict]] = {}
        for path in (self.faults / "ran").glob(f"{experiment}.trial_*.json"):
            number = int(path.name.split(".")[1].split("_")[1])
            out.setdefault(number, []).append(json.loads(path.read_text()))
        return {n: sorted(v, key=lambda a: a["start"]) for n, v in out.items()}

    def records(self, experiment: str) -> dict[int, dict]:
        # the controller's own records: an event logged the moment a trial is reported or completed
        from squeezelstm.search.controller import read_journal

        try:
            state = read_journal(self.storage / experiment / "controller")
        except (OSError, ValueError):
            return {}
        return {n: r.to_dict() for n, r in state.records.items()}


def _mlflow(env: _Env, experiment: str):
    """(client, parent run, child runs of the parent) for ``experiment`` on the server."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(env.server.uri)
    exp = client.get_experiment_by_name(experiment)
    parents = client.search_runs([exp.experiment_id], "tags.`squeezelstm.role` = 'search'")
    assert len(parents) == 1, f"expected one parent run, got {len(parents)}"
    children = client.search_runs([exp.experiment_id], f"tags.`mlflow.parentRunId` = '{parents[0].info.run_id}'")
    return client, parents[0], children


def _optuna_states(env: _Env, experiment: str) -> dict[int, str]:
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    journal = env.storage / experiment / "controller" / "optuna.journal"
    storage = JournalStorage(JournalFileBackend(str(journal)))
    study = optuna.load_study(study_name=experiment, storage=storage)
    return {t.number: t.state.name for t in study.trials}


def _ray_trials(env: _Env, experiment: str) -> dict[int, dict]:
    """Trial number -> {"status", "failures", "final"} from Ray's own experiment state in the storage."""
    out: dict[int, dict] = {}
    for state_file in sorted((env.storage / experiment / "ray").glob("session-*/experiment_state-*.json")):
        for trial, runtime in json.loads(state_file.read_text())["trial_data"]:
            trial = json.loads(trial) if isinstance(trial, str) else trial
            runtime = json.loads(runtime) if isinstance(runtime, str) else runtime
            last = runtime.get("last_result") or {}
            out[int(trial["config"]["number"])] = {"status": trial["status"], "failures": runtime["num_failures"],
                                                  "final": last if last.get("final") else None}
    return out


# ---------------------------------------------------------------------------------------------


def test_search_runs_on_several_nodes_and_faulty_trials_are_recorded_everywhere(env):
    """Multi-node search; trials 1-3 raise / run out of memory / diverge, and the search goes on."""
    exp = "multinode"
    env.set_faults(exp, {1: "raise", 2: "oom", 3: "diverge"})
    run = env.search(exp, trials=4, epochs=2)

    records = env.records(exp)
    assert sorted(records) == [0, 1, 2, 3]
    status = {n: r["status"] for n, r in records.items()}
    assert status == {0: "finished", 1: "failed", 2: "failed", 3: "diverged"}, status

    # Trials ran on more than one node (the hook asked each trial's Ray worker for its node id).
    ran = env.ran(exp)
    nodes = {a["node"] for attempts in ran.values() for a in attempts}
    assert None not in nodes and len(nodes) >= 2, ran

    # Results and checkpoints sit in the configured storage.
    assert (env.storage / exp / "trials" / "trial_0000" / "checkpoint.pt").is_file()
    ray_trials = _ray_trials(env, exp)
    assert sorted(ray_trials) == [0, 1, 2, 3]
    assert list((env.storage / exp / "ray").glob("session-*/trial_0000/checkpoint_*")), "no Ray checkpoint in storage"

    # Ray: the raising trial errored (its traceback kept in the storage); OOM and divergence are
    # trial outcomes the trainer reports in its final result.
    assert ray_trials[1]["status"] == "ERROR" and ray_trials[0]["status"] == "TERMINATED"
    assert "injected fault" in next((env.storage / exp / "ray").glob("session-*/trial_0001/error.txt")).read_text()
    assert ray_trials[2]["final"]["trial_status"] == "failed"
    assert ray_trials[3]["final"]["trial_status"] == "diverged"
    assert ray_trials[0]["final"]["trial_status"] == "finished"

    # Optuna: finished trials are COMPLETE, the rest FAIL.
    states = _optuna_states(env, exp)
    assert states == {0: "COMPLETE", 1: "FAIL", 2: "FAIL", 3: "FAIL"}, states

    # MLflow server: every trial has exactly one child run with its status, none left RUNNING,
    # every epoch of the finished trials logged from the worker, config artifacts served.
    client, parent, children = _mlflow(env, exp)
    assert parent.info.status == "FINISHED"
    by_number = {int(c.data.tags["squeezelstm.trial"]): c for c in children}
    assert len(children) == 4 and sorted(by_number) == [0, 1, 2, 3]
    assert {n: c.data.tags["squeezelstm.status"] for n, c in by_number.items()} == status
    assert all(c.info.status != "RUNNING" for c in children)
    assert by_number[1].info.status == "FAILED" and by_number[2].info.status == "FAILED"
    for n in (0,):
        steps = sorted(m.step for m in client.get_metric_history(by_number[n].info.run_id, "valid_ppl"))
        assert steps == [1, 2], (n, steps)
    assert parent.info.artifact_uri.startswith("mlflow-artifacts:")
    assert len(list((env.server.root / "artifacts").rglob("config.json"))) >= 3
    front = json.loads(run.stdout)
    assert [t["number"] for t in front] == [0]



def _closed(proc, log, env, exp: str) -> str:
    """The search process killed if it still runs (a failed test), its log closed; the log's text."""
    if proc.poll() is None:
        proc.kill()
        proc.wait()
    log.close()
    return (env.root / f"{exp}.log").read_text()


def test_mlflow_server_down_for_a_while_loses_no_metric(env):
    """The server is stopped after the first epochs are logged and restarted later on the same port."""
    exp = "serverdown"
    env.set_faults(exp, {0: "slow", 1: "slow"}, slow_s=1.5)
    log = (env.root / f"{exp}.log").open("w")
    proc = subprocess.Popen(env.command(exp, trials=2, epochs=3), stdout=subprocess.PIPE, stderr=log,
                            text=True, cwd=env.root)
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and proc.poll() is None:
            ran = env.ran(exp)
            if any(a["epochs"] for attempts in ran.values() for a in attempts):
                break
            time.sleep(0.2)
        assert proc.poll() is None, (env.root / f"{exp}.log").read_text()[-3000:]
        env.server.stop()
        down_at = time.monotonic()
        time.sleep(4.0)
        # the trials kept training while nobody could log them
        trained = max(len(a["epochs"]) for attempts in env.ran(exp).values() for a in attempts)
        env.server.start()
        out, _ = proc.communicate(timeout=300)
    finally:
        stderr = _closed(proc, log, env, exp)
    assert proc.returncode == 0, stderr[-4000:]
    assert time.monotonic() - down_at > 4.0 and trained >= 1

    records = env.records(exp)
    assert {n: r["status"] for n, r in records.items()} == {0: "finished", 1: "finished"}
    client, parent, children = _mlflow(env, exp)
    assert parent.info.status == "FINISHED" and len(children) == 2
    for child in children:
        number = int(child.data.tags["squeezelstm.trial"])
        assert child.info.status == "FINISHED" and child.data.tags["squeezelstm.status"] == "finished"
        for key in ("valid_ppl", "train_ppl"):
            steps = sorted(m.step for m in client.get_metric_history(child.info.run_id, key))
            assert steps == [1, 2, 3], (number, key, steps)
        assert "final_valid_ppl" in child.data.metrics
    assert json.loads(out)


def test_driver_killed_then_resumed_keeps_one_parent_run_and_no_duplicate_children(env):
    """SIGKILL the search driver mid-search, then ``--resume`` against the same cluster and server."""
    exp = "driverkill"
    env.set_faults(exp, {0: "slow", 1: "slow", 2: "slow"}, slow_s=1.0)
    log = (env.root / f"{exp}.log").open("w")
    proc = subprocess.Popen(env.command(exp, trials=3, epochs=3), stdout=subprocess.DEVNULL, stderr=log,
                            cwd=env.root, start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and proc.poll() is None:
            recs = env.records(exp).values()
            if any(r["status"] == "finished" for r in recs) and \
                    any(r["status"] == "running" and r["history"] for r in recs):
                break
            time.sleep(0.1)
        assert proc.poll() is None, "the search ended before it could be killed:\n" + \
            (env.root / f"{exp}.log").read_text()[-3000:]
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        log.close()
    time.sleep(2.0)  # Ray ends the dead driver's trial workers
    before = env.records(exp)
    finished_before = {n for n, r in before.items() if r["status"] == "finished"}
    interrupted = {n for n, r in before.items() if r["status"] == "running" and r["history"]}
    _, parent_before, _ = _mlflow(env, exp)

    run = env.search(exp, trials=3, epochs=3, extra=("--resume",))
    after = env.records(exp)
    assert sorted(after) == [0, 1, 2] and all(r["status"] == "finished" for r in after.values()), after
    ran = env.ran(exp)
    for n in finished_before:
        assert len(ran[n]) == 1, f"finished trial {n} ran again: {ran[n]}"
        assert after[n] == before[n]
    assert interrupted
    for n in interrupted:
        # run again after the kill, and continued from its checkpoint: epoch 1 was not trained again
        assert len(ran[n]) >= 2 and 1 not in ran[n][-1]["epochs"], ran[n]
        assert [h["epoch"] for h in after[n]["history"]] == [1, 2, 3]
    client, parent, children = _mlflow(env, exp)  # asserts a single parent run
    assert parent.info.run_id == parent_before.info.run_id and parent.info.status == "FINISHED"
    numbers = sorted(int(c.data.tags["squeezelstm.trial"]) for c in children)
    assert numbers == [0, 1, 2], numbers  # no child run duplicated
    assert all(c.info.status == "FINISHED" and c.data.tags["squeezelstm.status"] == "finished" for c in children)
    for child in children:
        steps = sorted(m.step for m in client.get_metric_history(child.info.run_id, "valid_ppl"))
        assert steps == [1, 2, 3], steps
    assert json.loads(run.stdout)


def test_worker_node_killed_mid_trial_is_retried_from_checkpoint_on_the_other_node(env):
    exp = "nodekill"
    env.set_faults(exp, {0: "slow", 1: "slow"}, slow_s=2.0)
    worker_id = env.worker.node_id
    log = (env.root / f"{exp}.log").open("w")
    proc = subprocess.Popen(env.command(exp, trials=2, epochs=3, max_failures=2), stdout=subprocess.PIPE,
                            stderr=log, text=True, cwd=env.root)
    victim = None
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and proc.poll() is None and victim is None:
            for number, attempts in env.ran(exp).items():
                if attempts[-1]["node"] == worker_id and attempts[-1]["epochs"]:
                    victim = number
            time.sleep(0.1)
        assert victim is not None, "no trial trained an epoch on the worker node:\n" + \
            (env.root / f"{exp}.log").read_text()[-3000:]
        env.cluster.remove_node(env.worker, allow_graceful=False)
        out, _ = proc.communicate(timeout=300)
    finally:
        stderr = _closed(proc, log, env, exp)
    assert proc.returncode == 0, stderr[-4000:]

    records = env.records(exp)
    assert {n: r["status"] for n, r in records.items()} == {0: "finished", 1: "finished"}, stderr[-3000:]
    attempts = env.ran(exp)[victim]
    assert len(attempts) >= 2 and attempts[0]["node"] == worker_id
    retry = attempts[-1]
    assert retry["node"] != worker_id
    # continued from its checkpoint: the retry did not train epoch 1 again
    assert retry["epochs"] and retry["epochs"][0] > 1 and retry["epochs"][-1] == 3, attempts
    assert [h["epoch"] for h in records[victim]["history"]] == [1, 2, 3]
    _, _, children = _mlflow(env, exp)
    assert len(children) == 2 and all(c.info.status == "FINISHED" for c in children)
    assert json.loads(out)
