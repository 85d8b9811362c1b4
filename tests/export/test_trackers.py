"""log.to: TensorBoard, MLflow and W&B receive exactly the rows of metrics.jsonl, all offline."""

import glob
import json
import struct
import sys

import pytest

from export.shipkit import qa_rows, train_tiny, write_rows
from whetstone.config import load_config
from whetstone.errors import WhetstoneError


@pytest.fixture
def data(tmp_path):
    return write_rows(tmp_path / "train.jsonl", qa_rows(range(8)))


def _rows(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_tensorboard_events_equal_metrics_jsonl(tmp_path, tiny_model_dir, data):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = train_tiny(tiny_model_dir, tmp_path / "run", data, "log.to=[tensorboard]", "train.max_steps=3")
    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    rows = _rows(run)
    for key, tag in (("loss", "train/loss"), ("lr", "train/lr"), ("grad_norm", "train/grad_norm"),
                     ("tokens_per_s", "train/tokens_per_s")):
        logged = [(e.step, e.value) for e in events.Scalars(tag)]
        assert logged == [(r["step"], pytest.approx(r[key], rel=1e-6)) for r in rows]


def test_mlflow_file_store_gets_params_metrics_and_the_final_status(tmp_path, tiny_model_dir, data, monkeypatch):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 keeps the file store behind this switch
    uri = (tmp_path / "mlruns").as_uri()
    run = train_tiny(tiny_model_dir, tmp_path / "run", data, "log.to=[mlflow]", f"log.mlflow_uri={uri}",
                     "log.project=ship-tests", "train.max_steps=3")
    run_id = json.loads((run / "trackers.json").read_text())["mlflow"]
    client = MlflowClient(tracking_uri=uri)
    info = client.get_run(run_id)
    assert info.info.status == "FINISHED" and info.info.run_name == "run"
    assert client.get_experiment(info.info.experiment_id).name == "ship-tests"
    assert info.data.params["method.r"] == "16" and info.data.params["train.max_steps"] == "3"
    history = [(m.step, m.value) for m in sorted(client.get_metric_history(run_id, "loss"), key=lambda m: m.step)]
    assert history == [(r["step"], pytest.approx(r["loss"])) for r in _rows(run)]
    summary = json.loads((run / "summary.json").read_text())
    assert info.data.metrics["final.train_loss"] == pytest.approx(summary["train_loss"])


def test_mlflow_resume_continues_the_same_run(tmp_path, tiny_model_dir, data, monkeypatch):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    from whetstone.train.dispatch import train

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    uri = (tmp_path / "mlruns").as_uri()
    overrides = [f"model={tiny_model_dir}", f"data.train={data}", "train.warmup=0.0", "train.log_every=1",
                 "train.max_steps=4", "train.batch_size=4", "log.to=[mlflow]", f"log.mlflow_uri={uri}"]
    run = tmp_path / "run"
    stopped = train(load_config(None, overrides), run, progress=False, on_step=lambda step, row: step == 2)
    run_id = json.loads((run / "trackers.json").read_text())["mlflow"]
    client = MlflowClient(tracking_uri=uri)
    assert stopped["stopped_early"] and client.get_run(run_id).info.status == "KILLED"
    train(None, run, resume=True, progress=False)
    assert json.loads((run / "trackers.json").read_text())["mlflow"] == run_id
    assert client.get_run(run_id).info.status == "FINISHED"
    assert sorted({m.step for m in client.get_metric_history(run_id, "loss")}) == [1, 2, 3, 4]


def _wandb_records(path):
    """Records of an offline .wandb file (LevelDB-log framing: 7-byte file header, 32 KiB blocks)."""
    from wandb.proto import wandb_internal_pb2

    raw = open(path, "rb").read()
    pos, block, pending = 7, 32768, b""
    while pos + 7 <= len(raw):
        left = block - pos % block
        if left < 7:
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", raw[pos:pos + 7])
        if length == 0 and kind == 0:
            pos += left
            continue
        data, pos = raw[pos + 7:pos + 7 + length], pos + 7 + length
        pending = data if kind in (1, 2) else pending + data
        if kind in (1, 4):  # FULL or LAST: a whole record
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            yield record


def _key(item) -> str:
    return item.key or "/".join(item.nested_key)  # wandb-core writes either form


def test_wandb_offline_run_holds_the_history_and_summary(tmp_path, tiny_model_dir, data, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DISABLE_GIT", "true")
    run = train_tiny(tiny_model_dir, tmp_path / "run", data, "log.to=[wandb]", "log.wandb_mode=offline",
                     "train.max_steps=3")
    (path,) = glob.glob(str(run / "wandb" / "offline-run-*" / "run-*.wandb"))
    history, summary = [], {}
    for record in _wandb_records(path):
        kind = record.WhichOneof("record_type")
        if kind == "history":
            history.append({_key(i): json.loads(i.value_json) for i in record.history.item})
        elif kind == "summary":
            summary.update({_key(i): json.loads(i.value_json) for i in record.summary.update})
    rows = _rows(run)
    assert [(h["_step"], h["loss"]) for h in history] == [(r["step"], pytest.approx(r["loss"])) for r in rows]
    assert summary["train_loss"] == json.loads((run / "summary.json").read_text())["train_loss"]
    assert json.loads((run / "trackers.json").read_text())["wandb"] in path


def test_a_missing_tracker_package_is_one_sentence_before_training(tmp_path, tiny_model_dir, data, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # `import wandb` now raises ImportError
    with pytest.raises(WhetstoneError, match="log.to: 'wandb' needs the Python package 'wandb'.*pip install wandb"):
        train_tiny(tiny_model_dir, tmp_path / "run", data, "log.to=[wandb]")
    assert not (tmp_path / "run" / "metrics.jsonl").exists()  # it failed before the first step


def test_log_config_is_checked():
    with pytest.raises(WhetstoneError, match="log.to\\[0\\]: got 'neptune'"):
        load_config(None, ["data.train=x.jsonl", "log.to=[neptune]"])
    with pytest.raises(WhetstoneError, match="listed twice"):
        load_config(None, ["data.train=x.jsonl", "log.to=[wandb, wandb]"])
