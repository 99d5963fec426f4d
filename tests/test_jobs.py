"""The training queue on the standalone host: real (tiny) trainings, one after another."""
import json
import os
import shutil
import threading
import time

import pytest

from lora_trainer.config import from_dict
from lora_trainer.hosts.base import Host
from lora_trainer.hosts.standalone import ReentrantJobError, StandaloneHost
from lora_trainer.jobs import JobManager

from conftest import make_images

WAIT = 300  # seconds; a tiny job takes a few


def make_config(data_dir, name, output_dir="", **overrides):
    options = {
        "train_data_dir": str(data_dir),
        "output_dir": str(output_dir) if output_dir else "",
        "output_name": name,
        "resolution": "64",
        "train_batch_size": 2,
        "network_dim": 4,
        "network_alpha": 2,
        "learning_rate": 5e-3,
        "max_train_epochs": 2,
        "save_every_n_epochs": 1,
        "cache_latents": True,
        "seed": 1,
        "device": "cpu",
    }
    options.update(overrides)
    config, _ = from_dict(options)
    return config


class RecordingHost(StandaloneHost):
    """The standalone host, plus: events it was given, a hook called on each, and an
    Interrupt button (``button``) the manager must poll."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.events = []
        self.on_event = None
        self.button = False
        self.gate = None  # a threading.Event: run_exclusive waits for it, then fails

    def report(self, event):
        self.events.append(event)
        if self.on_event:
            self.on_event(event)

    def interrupt_requested(self):
        return self.button

    def run_exclusive(self, fn, *, title):
        if self.gate is not None:
            self.gate.wait(WAIT)
            raise RuntimeError("host went away")
        return super().run_exclusive(fn, title=title)


@pytest.fixture
def dataset(tmp_path):
    train = tmp_path / "train"
    make_images(train / "1_sks", 4)  # 4 images, batch 2: 2 steps per epoch
    return train


@pytest.fixture
def host(tiny_checkpoints, tmp_path):
    return RecordingHost(tiny_checkpoints("sd1"), tmp_path / "models" / "Lora", device="cpu")


def test_host_protocol(host):
    assert isinstance(host, Host)
    assert host.name == "standalone"
    assert host.interrupt_requested() is False
    assert not host.model_loaded  # loaded lazily, on the first lend


def test_two_queued_jobs_run_one_after_another(host, dataset, tmp_path):
    manager = JobManager(host, log=lambda _m: None)
    snapshots = []
    host.on_event = lambda e: snapshots.append(manager.status()) if e.kind == "step" else None

    first = manager.submit(make_config(dataset, "first"))  # empty output_dir: the host's LoRA folder
    second = manager.submit(make_config(dataset, "second", tmp_path / "out_second", max_train_epochs=1))
    assert manager.status(second)["state"] in ("queued", "running")
    a = manager.wait(first, WAIT)
    b = manager.wait(second, WAIT)

    assert a["state"] == "done", a["message"]
    assert b["state"] == "done", b["message"]
    lora_dir = host.lora_dir()
    assert a["files"] == [str(lora_dir / "first-000001.safetensors"), str(lora_dir / "first.safetensors")]
    assert b["files"] == [str(tmp_path / "out_second" / "second.safetensors")]
    assert all((lora_dir / n).is_file() for n in ("first-000001.safetensors", "first.safetensors"))
    assert a["config"]["output_dir"] == str(lora_dir)
    # one after another: the second started when the first had finished
    assert a["finished_at"] <= b["started_at"]
    assert (a["step"], a["total_steps"], a["epoch"], a["total_epochs"]) == (4, 4, 2, 2)
    assert (b["step"], b["total_steps"], b["total_epochs"]) == (2, 2, 1)
    assert len(a["losses"]) == 4 and len(b["losses"]) == 2
    assert a["peak_memory"] and a["elapsed"] > 0 and a["message"] == ""
    json.dumps(manager.jobs())  # JSON-able

    # the status advanced step by step while the job ran (polled from the host's display hook)
    first_run = [s for s in snapshots if s["id"] == first]
    assert [s["step"] for s in first_run] == [1, 2, 3, 4]
    assert all(s["state"] == "running" and s["name"] == "first" for s in first_run)
    assert [s["epoch"] for s in first_run] == [1, 1, 2, 2]
    assert all(s["lr"] and s["loss"] is not None for s in first_run)
    assert first_run[0]["files"] == [] and first_run[2]["files"] == [str(lora_dir / "first-000001.safetensors")]
    # per-step losses recovered live from the loop's running means equal the loop's own list
    assert first_run[-1]["losses"] == pytest.approx(a["losses"], rel=1e-6, abs=1e-7)
    # every event also went to the host's display
    kinds = [e.kind for e in host.events]
    assert kinds.count("start") == 2 and kinds.count("end") == 2 and kinds.count("step") == 6
    assert manager.status()["id"] == second  # nothing runs: the last one
    assert [j["id"] for j in manager.jobs()] == [first, second]


def test_interrupt_keeps_saved_epochs_and_current_weights(host, dataset, tmp_path):
    manager = JobManager(host, log=lambda _m: None)
    assert manager.interrupt() is False  # nothing runs

    # Interrupt from the tab / API during step 3 (epoch 2 of 3), discarding the current weights:
    # training stops after that step, the epoch saved before is kept
    def press(event):
        if event.kind == "step" and event.step == 3:
            assert manager.interrupt(save_current=False) is True

    host.on_event = press
    job = manager.submit(make_config(dataset, "stopme", tmp_path / "out", max_train_epochs=3))
    status = manager.wait(job, WAIT)
    out = tmp_path / "out"
    assert status["state"] == "interrupted"
    assert (status["step"], status["total_steps"]) == (3, 6)
    assert "step 3" in status["message"]
    assert status["files"] == [str(out / "stopme-000001.safetensors")]
    assert sorted(p.name for p in out.glob("*.safetensors")) == ["stopme-000001.safetensors"]

    # the host's own Interrupt button, pressed during step 2: polled at the next progress
    # event (step 3), the current weights are saved too
    def button(event):
        if event.kind == "step" and event.step == 2:
            host.button = True

    host.on_event = button
    job = manager.submit(make_config(dataset, "button", tmp_path / "out2", max_train_epochs=3))
    status = manager.wait(job, WAIT)
    out2 = tmp_path / "out2"
    assert status["state"] == "interrupted" and status["step"] == 3
    assert status["files"] == [str(out2 / "button-000001.safetensors"),
                               str(out2 / "button-000002-interrupted.safetensors")]
    assert all(os.path.isfile(f) for f in status["files"])
    assert not (out2 / "button.safetensors").exists()


def test_failed_job_reports_the_problem_and_the_queue_goes_on(host, dataset, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    manager = JobManager(host, log=lambda _m: None)
    bad = manager.submit(make_config(empty, "bad", tmp_path / "bad"))
    good = manager.submit(make_config(dataset, "good", tmp_path / "good", max_train_epochs=1))
    failed = manager.wait(bad, WAIT)
    assert failed["state"] == "failed"
    assert "no training images" in failed["message"] and "10_name" in failed["message"]
    assert "Traceback" not in failed["message"] and failed["files"] == []
    assert manager.wait(good, WAIT)["state"] == "done"

    # a config that became invalid while queued (dataset folder removed): failed, with the reason
    gone = tmp_path / "gone"
    make_images(gone / "1_x", 2)
    config = make_config(gone, "gone", tmp_path / "gone_out")
    shutil.rmtree(gone)
    status = manager.wait(manager.submit(config), WAIT)
    assert status["state"] == "failed" and "does not exist" in status["message"]


def test_queue_file_survives_a_restart(host, dataset, tmp_path, tiny_checkpoints):
    queue_file = tmp_path / "state" / "queue.json"
    empty = tmp_path / "empty"
    empty.mkdir()
    manager = JobManager(host, queue_file=queue_file, log=lambda _m: None)
    done_before = manager.submit(make_config(empty, "early", tmp_path / "early"))
    assert manager.wait(done_before, WAIT)["state"] == "failed"

    host.gate = threading.Event()  # the next job hangs "running" until released
    running = manager.submit(make_config(dataset, "running", tmp_path / "r"))
    queued = manager.submit(make_config(dataset, "queued", tmp_path / "q", max_train_epochs=1))
    dropped = manager.submit(make_config(dataset, "dropped", tmp_path / "d"))
    deadline = time.monotonic() + WAIT
    while manager.status(running)["state"] != "running" and time.monotonic() < deadline:
        time.sleep(0.05)
    assert manager.cancel(dropped) is True
    assert manager.cancel(running) is False  # running: interrupt() stops it, not cancel()
    assert manager.status(dropped)["state"] == "cancelled"

    # the process "dies" here: a new manager reads the file as it is now
    snapshot = tmp_path / "after_crash.json"
    shutil.copy(queue_file, snapshot)
    host.gate.set()
    manager.close(WAIT)
    saved = json.loads(snapshot.read_text())
    assert saved["version"] == 1 and [j["id"] for j in saved["jobs"]] == [done_before, running, queued, dropped]

    fresh_host = StandaloneHost(tiny_checkpoints("sd1"), tmp_path / "lora", device="cpu")
    restored = JobManager(fresh_host, queue_file=snapshot, log=lambda _m: None, autostart=False)
    jobs = {j["id"]: j for j in restored.jobs()}
    assert list(jobs) == [done_before, running, queued, dropped]
    assert jobs[done_before]["state"] == "failed" and "no training images" in jobs[done_before]["message"]
    assert jobs[running]["state"] == "interrupted" and "process stopped" in jobs[running]["message"]
    assert jobs[running]["finished_at"] is not None
    assert jobs[queued]["state"] == "queued" and jobs[queued]["config"]["output_name"] == "queued"
    assert jobs[dropped]["state"] == "cancelled"
    # the restored state was written back at once
    assert json.loads(snapshot.read_text())["jobs"][1]["state"] == "interrupted"

    restored.start()
    status = restored.wait(queued, WAIT)
    assert status["state"] == "done", status["message"]
    assert status["files"] == [str(tmp_path / "q" / "queued.safetensors")]
    assert json.loads(snapshot.read_text())["jobs"][2]["state"] == "done"


def test_unreadable_queue_file_starts_empty(host, tmp_path):
    queue_file = tmp_path / "queue.json"
    queue_file.write_text("{not json")
    messages = []
    manager = JobManager(host, queue_file=queue_file, log=messages.append)
    assert manager.jobs() == [] and manager.status() == {}
    assert (tmp_path / "queue.json.unreadable").read_text() == "{not json"
    assert any("could not be read" in m for m in messages)


def test_run_exclusive_is_not_reentrant(host, tiny_checkpoints, tmp_path):
    other = StandaloneHost(tiny_checkpoints("sd1"), tmp_path / "other")
    with pytest.raises(ReentrantJobError, match="not re-entrant"):
        host.run_exclusive(lambda: host.run_exclusive(lambda: 1, title="inner"), title="outer")
    # the lock is process-wide: another host object inside a job is refused too
    with pytest.raises(ReentrantJobError, match="'outer'"):
        host.run_exclusive(lambda: other.run_exclusive(lambda: 1, title="inner"), title="outer")
    assert host.run_exclusive(lambda: 2, title="after") == 2  # released after the errors

    # from two threads, jobs wait for each other instead
    order = []
    started = threading.Event()

    def slow():
        started.set()
        time.sleep(0.2)
        order.append("slow")

    thread = threading.Thread(target=lambda: host.run_exclusive(slow, title="slow"))
    thread.start()
    started.wait(5)
    other.run_exclusive(lambda: order.append("second"), title="second")
    thread.join()
    assert order == ["slow", "second"]


def test_model_is_loaded_once_and_kept(host, dataset, tmp_path):
    manager = JobManager(host, log=lambda _m: None)
    a = manager.wait(manager.submit(make_config(dataset, "a", tmp_path / "a", max_train_epochs=1)), WAIT)
    model = host._model
    b = manager.wait(manager.submit(make_config(dataset, "b", tmp_path / "b", max_train_epochs=1)), WAIT)
    assert a["state"] == b["state"] == "done"
    assert host._model is model


def test_error_messages_are_one_clear_line():
    import torch

    from lora_trainer.config import ConfigError
    from lora_trainer.jobs import error_message

    oom = error_message(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB\nmore detail"))
    assert oom.startswith("out of GPU memory: lower train_batch_size") and "Tried to allocate 2.00 GiB" in oom
    assert "more detail" not in oom
    assert error_message(ConfigError("resolution 'x': expected 'SIZE'")) == "resolution 'x': expected 'SIZE'"
    assert error_message(KeyError("unet")) == "KeyError: 'unet'"
