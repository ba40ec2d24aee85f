"""MLflow tracking: a run read back with MLflow's own client, a resumed run continuing its MLflow run."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

import imgcls
from imgcls import cli
from tests.engine.test_crash import CrashAtStep

FAST = {
    "train.amp": "off",
    "log.progress": False,
    "data.batch_size": 64,
    "optim.lr": 0.05,
    "log.mlflow": True,
}


def train_with_mlflow(out: Path) -> list[str]:
    return ["train", "--data", "digits", "--epochs", "1", "--out", str(out), "--set", "log.mlflow=true"]


def _client(uri: str):
    import mlflow

    return mlflow.MlflowClient(uri)


def test_a_run_logs_params_metrics_per_epoch_and_artifacts_to_the_default_store(tmp_path: Path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)  # MLflow's default store: ./mlflow.db with artifacts in ./mlruns
    result = imgcls.train(data="digits", model="tutorial-cnn", epochs=2, out=tmp_path / "run", overrides=FAST)
    record = json.loads((result.run_dir / "mlflow.json").read_text())
    assert record["tracking_uri"] == f"sqlite:///{tmp_path / 'mlflow.db'}" and (tmp_path / "mlruns").is_dir()

    client = _client(record["tracking_uri"])
    run = client.get_run(record["run_id"])
    assert run.info.status == "FINISHED" and run.info.run_name == "run"
    assert run.data.params["data.name"] == "digits" and run.data.params["train.epochs"] == "2"
    assert run.data.params["model.name"] == "tutorial-cnn" and run.data.params["log.mlflow"] == "True"
    history = client.get_metric_history(run.info.run_id, "val_acc")
    assert [m.step for m in history] == [1, 2]
    assert [m.value for m in history] == [row["val_acc"] for row in result.history]
    assert run.data.metrics["test_accuracy"] == pytest.approx(result.test["accuracy"])
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {
        "report.html",
        "confusion_matrix.png",
        "model.json",
        "model.safetensors",
        "config.yaml",
    } <= artifacts


def test_a_resumed_run_continues_the_same_mlflow_run(tmp_path: Path, monkeypatch):
    uri = f"sqlite:///{tmp_path / 'store.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.chdir(tmp_path)
    args = {"data": "digits", "model": "tutorial-cnn", "epochs": 2, "overrides": FAST}
    with pytest.raises(RuntimeError, match="simulated crash"):
        imgcls.train(out=tmp_path / "run", callbacks=[CrashAtStep(25)], **args)  # 20 steps an epoch
    record = json.loads((tmp_path / "run" / "mlflow.json").read_text())
    client = _client(uri)
    assert record["tracking_uri"] == uri and client.get_run(record["run_id"]).info.status == "FAILED"

    resumed = imgcls.train(resume=tmp_path / "run")
    run = client.get_run(record["run_id"])
    assert run.info.status == "FINISHED" and len(client.search_runs([run.info.experiment_id])) == 1
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val_acc")] == [1, 2]
    assert run.data.metrics["test_accuracy"] == pytest.approx(resumed.test["accuracy"])


def test_without_the_extra_one_error_line_names_it(tmp_path: Path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "mlflow", None)
    assert cli.main(train_with_mlflow(tmp_path / "r")) == 2
    assert capsys.readouterr().err.strip() == (
        "error: log.mlflow=true (MLflow tracking) need(s) the mlflow extra: pip install 'imgcls[mlflow]'"
    )
    assert not (tmp_path / "r").exists()  # refused before the run folder is made


def test_a_store_mlflow_cannot_use_is_one_error_line_before_any_run_folder(
    tmp_path: Path, monkeypatch, capsys
):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", str(tmp_path / "plain-mlruns"))  # MLflow 3 refuses file stores
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    assert cli.main(train_with_mlflow(tmp_path / "r")) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: cannot use the MLflow store {tmp_path / 'plain-mlruns'}: MlflowException")
    assert "\n" not in err and not (tmp_path / "r").exists()


def test_a_store_failing_mid_run_warns_once_and_the_run_finishes(tmp_path: Path, monkeypatch, caplog):
    import mlflow

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'store.db'}")

    def refuse(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(mlflow.MlflowClient, "log_artifact", refuse)
    result = imgcls.train(data="digits", model="tutorial-cnn", epochs=1, out=tmp_path / "run", overrides=FAST)
    assert result.test is not None and (result.run_dir / "eval.json").is_file()
    warnings = [
        r.getMessage() for r in caplog.records if "mlflow" in r.getMessage() and r.levelname == "WARNING"
    ]
    assert warnings == [
        "mlflow: could not log test metrics and artifacts (OSError: disk full); training goes on without MLflow"
    ]
