"""hosts/a1111_compare.py without a WebUI: finding the script, its signature, the routes' refusals.
(The comparison itself runs in a real WebUI in tests/test_webui_real.py.)"""
import json

import pytest

fastapi = pytest.importorskip("fastapi")
pytest.importorskip("httpx")
from fastapi import FastAPI  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402

from lora_trainer.compare.xyz import XYZ_RUN_PARAMETERS, ComparisonError  # noqa: E402
from lora_trainer.hosts import a1111_compare  # noqa: E402


class _Script:
    def __init__(self, title):
        self._title = title

    def title(self):
        return self._title

    def run(self, p, x_type, x_values, x_values_dropdown, y_type, y_values, y_values_dropdown, z_type, z_values,
            z_values_dropdown, draw_legend, include_lone_images, include_sub_grids, no_fixed_seeds, vary_seeds_x,
            vary_seeds_y, vary_seeds_z, margin_size, csv_mode):
        pass


class _Runner:
    def __init__(self, *titles):
        self.selectable_scripts = [_Script(t) for t in titles]


def test_the_script_is_found_by_title_in_any_case():
    assert a1111_compare.find_xyz_script(_Runner("Prompt matrix", "X/Y/Z plot")).title() == "X/Y/Z plot"
    assert a1111_compare.find_xyz_script(_Runner("X/Y/Z Plot")).title() == "X/Y/Z Plot"  # Forge classic
    with pytest.raises(ComparisonError, match="Prompt matrix"):
        a1111_compare.find_xyz_script(_Runner("Prompt matrix"))


def test_the_live_signature_is_read():
    assert tuple(a1111_compare.run_parameters(_Script("x"))) == XYZ_RUN_PARAMETERS


class _Host:
    def __init__(self, lora_dir):
        self._dir = lora_dir

    def lora_dir(self):
        return self._dir

    def refresh_loras(self):
        pass


class _Manager:
    def __init__(self, state):
        self.state = state

    def status(self):
        return {"id": "abc", "state": self.state}


def _client(tmp_path, state="done"):
    app = FastAPI()
    host = _Host(tmp_path / "Lora")
    (tmp_path / "Lora").mkdir(exist_ok=True)
    assert a1111_compare.register_routes(app, get_host=lambda: host, get_manager=lambda: _Manager(state))
    assert not a1111_compare.register_routes(app, get_host=lambda: host)  # once per app
    return TestClient(app)


def test_the_routes_refuse_what_they_cannot_do(tmp_path):
    client = _client(tmp_path)
    r = client.post("/lora_trainer/v1/compare", json={"name": "x", "folder": str(tmp_path / "elsewhere")})
    assert r.status_code == 403 and "outside the LoRA folders" in r.json()["detail"]
    r = client.post("/lora_trainer/v1/compare", json={"name": "x", "stepz": 3})
    assert r.status_code == 422 and "stepz" in r.json()["detail"]
    r = client.post("/lora_trainer/v1/compare", json={"name": "nothing_here"})
    assert r.status_code == 422 and "nothing_here" in r.json()["detail"]
    r = client.post("/lora_trainer/v1/compare", json={})
    assert r.status_code == 422
    r = client.post("/lora_trainer/v1/publish", json={"name": "x"})
    assert r.status_code == 422
    busy = _client(tmp_path, state="running")
    r = busy.post("/lora_trainer/v1/compare", json={"name": "x"})
    assert r.status_code == 409 and "abc" in r.json()["detail"]


def test_publish_route_copies_the_epoch(tmp_path):
    import torch

    from lora_trainer.networks.io import save_network

    client = _client(tmp_path)
    lora = tmp_path / "Lora"
    save_network(lora / "c-000001.safetensors", {"lora_unet_a.alpha": torch.tensor(1.0)}, {"ss_output_name": "c"})
    save_network(lora / "c.safetensors", {"lora_unet_a.alpha": torch.tensor(2.0)}, {"ss_output_name": "c"})
    r = client.post("/lora_trainer/v1/publish", json={"name": "c", "epoch": 1, "release_name": "c_v1"})
    assert r.status_code == 200, r.text
    assert r.json()["preview"] is None  # no comparison ran in this process
    from lora_trainer.compare.xyz import read_metadata

    assert read_metadata(lora / "c_v1.safetensors")["ss_output_name"] == "c_v1"
    assert json.loads((lora / "c_v1.json").read_text("utf-8"))["preferred weight"] == 0.8
    r = client.post("/lora_trainer/v1/publish", json={"name": "c", "epoch": 1, "release_name": "c_v1"})
    assert r.status_code == 422 and "exists" in r.json()["detail"]


def _two_epochs(lora):
    import torch

    from lora_trainer.networks.io import save_network

    save_network(lora / "c-000001.safetensors", {"lora_unet_a.alpha": torch.tensor(1.0)}, {"ss_output_name": "c"})
    save_network(lora / "c.safetensors", {"lora_unet_a.alpha": torch.tensor(2.0)}, {"ss_output_name": "c"})


def test_publish_route_never_overwrites_an_epoch_of_the_family(tmp_path):
    client = _client(tmp_path)
    lora = tmp_path / "Lora"
    _two_epochs(lora)
    before = {p.name: p.read_bytes() for p in lora.iterdir()}
    for release in ("c", "c-000001", "c-000002"):
        r = client.post("/lora_trainer/v1/publish",
                        json={"name": "c", "epoch": 1, "release_name": release, "overwrite": True})
        assert r.status_code == 422 and "choose another release name" in r.json()["detail"], r.text
    assert {p.name: p.read_bytes() for p in lora.iterdir()} == before


def test_publish_route_takes_the_preview_from_the_row_at_the_comparisons_strength(tmp_path):
    from PIL import Image

    from lora_trainer.compare.result import ComparisonResult, remember
    from lora_trainer.compare.xyz import build_comparison, discover_family

    client = _client(tmp_path)
    lora = tmp_path / "Lora"
    _two_epochs(lora)
    comparison = build_comparison(discover_family(lora, "c"), prompt="sks", y="strength", strengths=[0.5, 0.8, 1.2],
                                  strength=0.8, width=8, height=8)
    cells = [Image.new("RGB", (8, 8), (cell.ix * 50, cell.iy * 70, 9)) for cell in comparison.cells]
    remember(ComparisonResult(comparison, Image.new("RGB", (24, 24)), cells, None, ""))
    r = client.post("/lora_trainer/v1/publish", json={"name": "c", "epoch": 1, "release_name": "c_best"})
    assert r.status_code == 200, r.text
    with Image.open(r.json()["preview"]) as preview:  # epoch 1's column, the 0.8 row (the second)
        assert preview.convert("RGB").getpixel((0, 0)) == (50, 70, 9)


def test_publish_route_reports_a_write_failure_by_file_not_a_bare_500(tmp_path, monkeypatch):
    from lora_trainer.compare import publish as publishing

    client = _client(tmp_path)
    _two_epochs(tmp_path / "Lora")

    def full_disk(*_args, **_kwargs):
        raise OSError(28, "No space left on device", str(tmp_path / "Lora" / "c_v1.safetensors"))

    monkeypatch.setattr(publishing, "publish", full_disk)
    r = client.post("/lora_trainer/v1/publish", json={"name": "c", "epoch": 1, "release_name": "c_v1"})
    assert r.status_code == 507
    assert "c_v1.safetensors" in r.json()["detail"] and "No space left" in r.json()["detail"]
