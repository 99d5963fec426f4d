"""The /lora_trainer/v1/ routes with a fake job manager: each route, validation as
422, and the WebUI's --api-auth (HTTP Basic) on every route when it is set."""
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("httpx")

from fastapi import FastAPI  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402

from lora_trainer import api  # noqa: E402
from lora_trainer.config import ConfigError, TrainConfig  # noqa: E402


class FakeManager:
    """Mirrors lora_trainer.jobs.JobManager's contract: status() gives {} for an unknown
    job, cancel() is False unless the job is queued."""

    def __init__(self):
        self.submitted = []
        self.interrupts = []
        self.cancelled = []
        self.fail_submit = None
        self.states = {}

    def submit(self, config):
        assert isinstance(config, TrainConfig)
        if self.fail_submit:
            raise self.fail_submit
        self.submitted.append(config)
        return f"job-{len(self.submitted)}"

    def _job(self, job_id):
        try:
            index = int(job_id.split("-")[1]) - 1
        except (IndexError, ValueError):
            return {}
        if not 0 <= index < len(self.submitted):
            return {}
        state = self.states.get(job_id, "queued")
        return {"id": job_id, "name": self.submitted[index].output_name, "state": state, "step": 0}

    def status(self, job_id=None):
        if job_id is None:
            return self._job(f"job-{len(self.submitted)}")
        return self._job(job_id)

    def jobs(self):
        return [self._job(f"job-{i + 1}") for i in range(len(self.submitted))]

    def interrupt(self, save_current=True):
        self.interrupts.append(save_current)
        return True

    def cancel(self, job_id):
        if self._job(job_id).get("state") != "queued":
            return False
        self.states[job_id] = "cancelled"
        self.cancelled.append(job_id)
        return True


def make_client(api_auth=None, **options):
    app = FastAPI()
    manager = FakeManager()
    assert api.register(app, lambda: manager, api_auth, **options)
    assert not api.register(app, lambda: manager, api_auth, **options)  # a second call adds nothing
    return TestClient(app), manager


@pytest.fixture
def dataset(tmp_path):
    (tmp_path / "data" / "10_sks").mkdir(parents=True)
    return tmp_path / "data"


def test_routes(dataset):
    client, manager = make_client()
    r = client.post("/lora_trainer/v1/train", json={"train_data_dir": str(dataset), "output_name": "mychar",
                                                     "network_dim": 8, "network_alpha": 16})
    assert r.status_code == 200, r.text
    assert r.json()["job_id"] == "job-1"
    assert any("larger than network_dim" in w for w in r.json()["warnings"])
    assert manager.submitted[0].network_dim == 8 and manager.submitted[0].output_name == "mychar"

    r = client.post("/lora_trainer/v1/train", json={"config": {"train_data_dir": str(dataset), "conv_dim": 4}})
    assert r.status_code == 200 and r.json()["job_id"] == "job-2"
    assert manager.submitted[1].network_args == ["conv_dim=4"]

    assert client.get("/lora_trainer/v1/jobs").json() == {"jobs": [manager._job("job-1"), manager._job("job-2")]}
    assert client.get("/lora_trainer/v1/status").json()["id"] == "job-2"
    assert client.get("/lora_trainer/v1/status", params={"job_id": "job-2"}).json()["id"] == "job-2"
    assert client.get("/lora_trainer/v1/status", params={"job_id": "job-9"}).status_code == 404

    assert client.post("/lora_trainer/v1/interrupt").json() == {"interrupted": True}
    assert client.post("/lora_trainer/v1/interrupt", json={"save_current": False}).json() == {"interrupted": True}
    assert manager.interrupts == [True, False]

    assert client.post("/lora_trainer/v1/cancel/job-1").json() == {"cancelled": True}
    assert manager.cancelled == ["job-1"]
    r = client.post("/lora_trainer/v1/cancel/job-1")
    assert r.status_code == 409 and "cancelled" in r.json()["detail"]
    manager.states["job-2"] = "running"
    r = client.post("/lora_trainer/v1/cancel/job-2")
    assert r.status_code == 409 and "/lora_trainer/v1/interrupt" in r.json()["detail"]
    assert client.post("/lora_trainer/v1/cancel/job-7").status_code == 404
    assert client.post("/lora_trainer/v1/cancel/nonsense").status_code == 404
    assert manager.cancelled == ["job-1"]


def test_empty_manager():
    client, _ = make_client()
    assert client.get("/lora_trainer/v1/status").json() == {}
    assert client.get("/lora_trainer/v1/jobs").json() == {"jobs": []}
    assert client.post("/lora_trainer/v1/interrupt").json() == {"interrupted": True}


def test_validation_errors_are_422_with_the_message(dataset, tmp_path):
    client, manager = make_client()
    r = client.post("/lora_trainer/v1/train", json={"train_data_dir": str(dataset), "netwrk_dim": 8})
    assert r.status_code == 422 and "unknown option 'netwrk_dim'" in r.json()["detail"]
    assert "network_dim" in r.json()["detail"]  # the suggestion
    r = client.post("/lora_trainer/v1/train", json={"train_data_dir": str(tmp_path / "nope")})
    assert r.status_code == 422 and "does not exist" in r.json()["detail"]
    r = client.post("/lora_trainer/v1/train", json={"train_data_dir": str(dataset), "resolution": "500"})
    assert r.status_code == 422 and "multiples of 8" in r.json()["detail"]
    r = client.post("/lora_trainer/v1/train", json={"config": "not an object"})
    assert r.status_code == 422 and "JSON object" in r.json()["detail"]
    r = client.post("/lora_trainer/v1/train", json=["not", "an", "object"])
    assert r.status_code == 422
    manager.fail_submit = ConfigError("the loaded model is SD2: not supported")
    r = client.post("/lora_trainer/v1/train", json={"train_data_dir": str(dataset)})
    assert r.status_code == 422 and "SD2" in r.json()["detail"]
    assert manager.submitted == []


def test_presets_defaults_and_dataset_root(dataset):
    presets = {"sdxl-char": {"network_dim": 32, "network_alpha": 16, "resolution": "1024", "output_name": "p"}}

    def apply(name, base):
        if name not in presets:
            raise KeyError(f"unknown preset {name!r}; known: {', '.join(presets)}")
        return {**base, **presets[name]}

    client, manager = make_client(apply_preset=apply, dataset_root=str(dataset.parent),
                                  get_defaults=lambda: {"output_dir": "/loras", "output_name": "default"})
    r = client.post("/lora_trainer/v1/train", json={"preset": "sdxl-char", "train_data_dir": "data", "network_dim": 8})
    assert r.status_code == 200, r.text
    config = manager.submitted[0]
    # defaults < preset < request
    assert (config.network_dim, config.network_alpha, config.resolution) == (8, 16.0, "1024")
    assert config.output_name == "p" and config.output_dir == "/loras"
    assert config.train_data_dir == str(dataset)  # relative to --lora-trainer-dataset-root
    r = client.post("/lora_trainer/v1/train", json={"config": {"train_data_dir": "data"}, "preset": "nope"})
    assert r.status_code == 422 and "unknown preset 'nope'" in r.json()["detail"]


def test_auth_off_by_default_and_401_without_or_with_wrong_credentials(dataset):
    client, _ = make_client()
    assert client.get("/lora_trainer/v1/jobs").status_code == 200

    client, manager = make_client("alice:s3cret:with:colons, bob:hunter2")
    routes = [
        ("get", "/lora_trainer/v1/status", {}),
        ("get", "/lora_trainer/v1/jobs", {}),
        ("post", "/lora_trainer/v1/interrupt", {}),
        ("post", "/lora_trainer/v1/cancel/job-1", {}),
        ("post", "/lora_trainer/v1/train", {"json": {"train_data_dir": str(dataset)}}),
    ]
    for method, path, kwargs in routes:
        r = getattr(client, method)(path, **kwargs)
        assert r.status_code == 401, (path, r.text)
        assert r.headers["www-authenticate"].lower().startswith("basic")
        for wrong in [("alice", "hunter2"), ("bob", "s3cret:with:colons"), ("carol", "x"), ("alice", ""),
                      ("", "")]:
            assert getattr(client, method)(path, auth=wrong, **kwargs).status_code == 401, (path, wrong)
    assert manager.submitted == [] and manager.interrupts == []
    r = client.post("/lora_trainer/v1/train", json={"train_data_dir": str(dataset)}, auth=("alice", "s3cret:with:colons"))
    assert r.status_code == 200 and r.json()["job_id"] == "job-1"
    for method, path, kwargs in routes[:4]:
        r = getattr(client, method)(path, auth=("bob", "hunter2"), **kwargs)
        assert r.status_code == 200, (path, r.text)


def test_unreadable_api_auth_lets_nobody_in():
    client, _ = make_client("no-colon-here")
    assert client.get("/lora_trainer/v1/jobs").status_code == 401
    assert client.get("/lora_trainer/v1/jobs", auth=("no-colon-here", "")).status_code == 401


def test_credentials_helpers():
    pairs = api.parse_api_auth("u1:p1,u2:p:2, ,bad")
    assert pairs == [("u1", "p1"), ("u2", "p:2")]
    assert api.credentials_ok(pairs, "u2", "p:2")
    assert not api.credentials_ok(pairs, "u1", "p:2")
    assert not api.credentials_ok([], "", "")


def test_the_real_presets_module_is_used_by_default(dataset):
    presets = pytest.importorskip("lora_trainer.presets")
    name = next(iter(presets.PRESETS))
    client, manager = make_client()
    r = client.post("/lora_trainer/v1/train", json={"preset": name, "train_data_dir": str(dataset),
                                                     "output_name": "mine"})
    assert r.status_code == 200, r.text
    expected = presets.apply_preset(name, {})
    config = manager.submitted[0]
    for key, value in expected.items():
        if key in ("network_alpha", "learning_rate", "unet_lr", "text_encoder_lr") and value is not None:
            assert getattr(config, key) == pytest.approx(float(value)), key
        elif key not in ("conv_dim", "conv_alpha"):
            assert getattr(config, key) == value or str(getattr(config, key)) == str(value), key
    assert config.output_name == "mine"
    r = client.post("/lora_trainer/v1/train", json={"preset": "no such preset", "train_data_dir": str(dataset)})
    assert r.status_code == 422 and "unknown preset" in r.json()["detail"]


def test_the_dataset_doctor_findings_join_the_warnings_without_refusing(tmp_path):
    from PIL import Image

    folder = tmp_path / "data" / "3_sks"
    folder.mkdir(parents=True)
    for i, colour in enumerate([(200, 30, 30), (30, 200, 30), (30, 30, 200)]):
        Image.new("RGB", (64, 64), colour).save(folder / f"{i}.png")
        (folder / f"{i}.txt").write_text("sks, thing" if i else "", encoding="utf-8")
    client, manager = make_client()
    r = client.post("/lora_trainer/v1/train", json={"train_data_dir": str(tmp_path / "data"), "trigger_word": "sks"})
    assert r.status_code == 200, r.text
    warnings = r.json()["warnings"]
    assert any(w.startswith("dataset error: [empty_caption]") and "`3_sks/0.txt`" in w for w in warnings), warnings
    assert any(w.startswith("dataset: [too_few_images] 3_sks:") and "20 or more" in w for w in warnings), warnings
    assert not any("missing_trigger" in w or "steps_" in w for w in warnings), warnings
    assert len(manager.submitted) == 1  # told, not refused: the caller decides


def test_with_the_real_job_manager(dataset, tmp_path):
    """The routes against lora_trainer.jobs.JobManager, on a host whose GPU job blocks
    until the test lets it go (then fails): running / queued / cancel / interrupt."""
    import threading

    jobs = pytest.importorskip("lora_trainer.jobs")
    entered, release = threading.Event(), threading.Event()

    class BlockingHost:
        name = "fake"

        def lora_dir(self):
            return tmp_path / "loras"

        def lend_model(self):
            raise AssertionError("not reached")

        def run_exclusive(self, fn, *, title):
            entered.set()
            release.wait(60)
            raise RuntimeError("stopped by the test")

        def report(self, event):
            pass

        def interrupt_requested(self):
            return False

        def refresh_loras(self):
            pass

    manager = jobs.JobManager(BlockingHost(), queue_file=tmp_path / "queue.json", log=lambda line: None)
    try:
        app = FastAPI()
        api.register(app, lambda: manager, "u:p")
        client = TestClient(app)
        auth = ("u", "p")
        first = client.post("/lora_trainer/v1/train", json={"train_data_dir": str(dataset), "output_name": "a"}, auth=auth)
        assert first.status_code == 200, first.text
        first = first.json()["job_id"]
        assert entered.wait(60)
        second = client.post("/lora_trainer/v1/train", json={"train_data_dir": str(dataset), "output_name": "b"},
                             auth=auth).json()["job_id"]
        assert client.get("/lora_trainer/v1/status", params={"job_id": first}, auth=auth).json()["state"] == "running"
        assert client.get("/lora_trainer/v1/status", auth=auth).json()["id"] == first
        assert client.get("/lora_trainer/v1/status", params={"job_id": "nope"}, auth=auth).status_code == 404
        listed = client.get("/lora_trainer/v1/jobs", auth=auth).json()["jobs"]
        assert [(j["id"], j["state"]) for j in listed] == [(first, "running"), (second, "queued")]
        assert client.post(f"/lora_trainer/v1/cancel/{second}", auth=auth).json() == {"cancelled": True}
        assert client.post(f"/lora_trainer/v1/cancel/{second}", auth=auth).status_code == 409
        assert client.post(f"/lora_trainer/v1/cancel/{first}", auth=auth).status_code == 409
        assert client.post("/lora_trainer/v1/cancel/nope", auth=auth).status_code == 404
        assert client.post("/lora_trainer/v1/interrupt", json={"save_current": False}, auth=auth).json() == {
            "interrupted": True}
        assert client.post("/lora_trainer/v1/jobs").status_code == 405
    finally:
        release.set()
    assert manager.wait(first, timeout=60)["state"] == "failed"
    assert client.post("/lora_trainer/v1/interrupt", auth=auth).json() == {"interrupted": False}
    manager.close(timeout=10)
