"""MLflow tracking (the `mlflow` extra, `log.mlflow=true`): one MLflow run per imgcls run.

The resolved config goes in as params, each epoch's metrics with the epoch as step, and at the end the test
metrics and the run's files (report, confusion matrix, model.json, weights) as artifacts. The MLflow run's id
and store are kept in RUN_DIR/mlflow.json, so `imgcls train --resume` continues the same MLflow run. The store
is MLFLOW_TRACKING_URI, else MLflow's own default (a local `mlflow.db` with artifacts in `mlruns/`, which
`mlflow ui` in the same folder shows). MLflow's client is used directly, not its global "active run".
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from imgcls.config import Config
from imgcls.errors import ImgclsError
from imgcls.utils import run_files
from imgcls.utils.extras import require

log = logging.getLogger("imgcls")
EXPERIMENT = "imgcls"  # unless MLFLOW_EXPERIMENT_NAME names another
ARTIFACTS = (
    run_files.CONFIG,
    run_files.METRICS,
    run_files.CURVES,
    run_files.report_html("test"),
    run_files.confusion_png("test"),
    run_files.pr_curves_png("test"),  # multi-label runs
    run_files.eval_json("test"),
    run_files.META,
    run_files.WEIGHTS,
)


# MLflow retries an unreachable server for about four minutes by default; imgcls asks less of it (unless
# the user set these) so that a wrong MLFLOW_TRACKING_URI is an error in seconds, not a hang.
REQUEST_LIMITS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_TIMEOUT": "20"}


class TrackingError(ImgclsError, RuntimeError):
    """The MLflow store cannot be used; the message names it and says why."""


def _mlflow() -> Any:
    return require("mlflow", "mlflow", "log.mlflow=true (MLflow tracking)")


@contextmanager
def _bounded_requests() -> Iterator[None]:
    """MLflow's HTTP retries and timeout bounded for a moment, the environment as it was afterwards."""
    added = {k: v for k, v in REQUEST_LIMITS.items() if k not in os.environ}
    os.environ.update(added)
    try:
        yield
    finally:
        for key in added:
            os.environ.pop(key, None)


def open_store(run_dir: Path | None) -> tuple[str, Any]:
    """The tracking URI and a checked client: the store a resumed run (`run_dir`) started in, else
    MLFLOW_TRACKING_URI or MLflow's default. Called before a new run folder is made.

    Raises:
        MissingExtraError: the mlflow extra is not installed.
        TrackingError: the store cannot be reached or used.
    """
    mlflow = _mlflow()
    known = _known_run(run_dir) if run_dir else None
    uri = known["tracking_uri"] if known else mlflow.get_tracking_uri()
    try:
        with _bounded_requests():
            client = mlflow.MlflowClient(uri)
            client.search_experiments(max_results=1)
    except Exception as e:  # MLflow's errors have many types (HTTP, SQL, store format): one line each
        raise TrackingError(f"cannot use the MLflow store {uri}: {_first_line(e)}") from None
    return uri, client


def _known_run(run_dir: Path) -> dict[str, str] | None:
    path = run_dir / run_files.MLFLOW
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return f"{type(error).__name__}: {text.splitlines()[0][:300] if text else ''}"


class MLflowLogger:
    """A callback that logs to MLflow; `finish` adds the test metrics and artifacts and closes the run.

    Once the run has started, a failing store never stops training: the first failure is logged as a
    warning and nothing more is sent.
    """

    def __init__(self, cfg: Config, run_dir: Path, store: tuple[str, Any]) -> None:
        self.run_dir, self.id_file = run_dir, run_dir / run_files.MLFLOW
        (self.uri, self.client), self.broken = store, False
        known = _known_run(run_dir)
        try:
            with _bounded_requests():
                if known:  # a resumed imgcls run continues its MLflow run, in the store it started in
                    self.run_id = known["run_id"]
                    self.client.update_run(self.run_id, status="RUNNING")
                else:
                    self.run_id = self._start(cfg)
        except Exception as e:
            raise TrackingError(f"cannot start an MLflow run in {self.uri}: {_first_line(e)}") from None
        log.info("mlflow: %s run %s in %s", "continuing" if known else "logging to", self.run_id, self.uri)

    def _start(self, cfg: Config) -> str:
        name = os.environ.get("MLFLOW_EXPERIMENT_NAME") or EXPERIMENT
        experiment = self.client.get_experiment_by_name(name)
        experiment_id = experiment.experiment_id if experiment else self.client.create_experiment(name)
        run = self.client.create_run(
            experiment_id, run_name=self.run_dir.name, tags={"imgcls.run_dir": str(self.run_dir)}
        )
        from mlflow.entities import Param

        params = [Param(k, str(v)) for k, v in _flat(cfg.to_dict()).items()]
        for i in range(0, len(params), 100):  # MLflow takes at most 100 params per batch
            self.client.log_batch(run.info.run_id, params=params[i : i + 100])
        record = {"tracking_uri": self.uri, "run_id": run.info.run_id, "experiment_id": experiment_id}
        self.id_file.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
        return run.info.run_id

    def on_eval_end(self, metrics: dict[str, float]) -> None:
        if self.broken:
            return
        with self._guard("epoch metrics"):
            self._log_metrics({k: v for k, v in metrics.items() if k != "epoch"}, step=int(metrics["epoch"]))

    def finish(self, test: dict[str, Any] | None) -> None:
        """Logs the test metrics (as test_<name>) and the run's files, and marks the MLflow run finished."""
        if self.broken:
            return
        with self._guard("test metrics and artifacts"):
            if test:
                self._log_metrics({f"test_{k}": v for k, v in test.items()}, step=0)
            for name in ARTIFACTS:
                if (self.run_dir / name).is_file():
                    self.client.log_artifact(self.run_id, str(self.run_dir / name))
            self.client.set_terminated(self.run_id, "FINISHED")

    def abort(self, interrupted: bool) -> None:
        """The imgcls run stopped early: KILLED after Ctrl-C (resumable), else FAILED."""
        if self.broken:
            return
        with self._guard("the run's end"):
            self.client.set_terminated(self.run_id, "KILLED" if interrupted else "FAILED")

    @contextmanager
    def _guard(self, what: str) -> Iterator[None]:
        """Runs the MLflow calls of its block; the first failure warns and turns the logger off."""
        try:
            with _bounded_requests():
                yield
        except Exception as e:
            self.broken = True
            log.warning(
                "mlflow: could not log %s (%s); training goes on without MLflow", what, _first_line(e)
            )

    def _log_metrics(self, values: dict[str, Any], step: int) -> None:
        from mlflow.entities import Metric

        stamp = _now_ms()
        numbers = {
            k: float(v) for k, v in values.items() if isinstance(v, (int, float)) and not isinstance(v, bool)
        }
        batch = [Metric(k, v, stamp, step) for k, v in numbers.items()]
        if batch:
            self.client.log_batch(self.run_id, metrics=batch)


def _flat(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out |= _flat(value, f"{prefix}{key}.")
        else:
            out[prefix + key] = value
    return out


def _now_ms() -> int:
    return int(time.time() * 1000)
