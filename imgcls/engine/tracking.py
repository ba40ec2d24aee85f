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
from pathlib import Path
from typing import Any

from imgcls.config import Config
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
    run_files.eval_json("test"),
    run_files.META,
    run_files.WEIGHTS,
)


def _mlflow():
    return require("mlflow", "mlflow", "log.mlflow=true (MLflow tracking)")


def check_available() -> None:
    """Fails now, before a run folder is made, when log.mlflow is on without the extra."""
    _mlflow()


class MLflowLogger:
    """A callback that logs to MLflow; `finish` adds the test metrics and artifacts and closes the run."""

    def __init__(self, cfg: Config, run_dir: Path) -> None:
        mlflow = _mlflow()
        self.run_dir, self.id_file = run_dir, run_dir / run_files.MLFLOW
        known = json.loads(self.id_file.read_text(encoding="utf-8")) if self.id_file.is_file() else None
        self.uri = known["tracking_uri"] if known else mlflow.get_tracking_uri()
        self.client = mlflow.MlflowClient(self.uri)
        if known:  # a resumed imgcls run continues its MLflow run, in the store it started in
            self.run_id = known["run_id"]
            self.client.update_run(self.run_id, status="RUNNING")
            log.info("mlflow: continuing run %s (%s)", self.run_id, self.uri)
        else:
            self.run_id = self._start(cfg)
            log.info("mlflow: run %s in %s", self.run_id, self.uri)

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
        self._log_metrics({k: v for k, v in metrics.items() if k != "epoch"}, step=int(metrics["epoch"]))

    def finish(self, test: dict[str, Any] | None) -> None:
        """Logs the test metrics (as test_<name>) and the run's files, and marks the MLflow run finished."""
        if test:
            self._log_metrics({f"test_{k}": v for k, v in test.items()}, step=0)
        for name in ARTIFACTS:
            if (self.run_dir / name).is_file():
                self.client.log_artifact(self.run_id, str(self.run_dir / name))
        self.client.set_terminated(self.run_id, "FINISHED")

    def abort(self, interrupted: bool) -> None:
        """The imgcls run stopped early: KILLED after Ctrl-C (resumable), else FAILED."""
        self.client.set_terminated(self.run_id, "KILLED" if interrupted else "FAILED")

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
