"""Bundled networks: 'demo' resolves to the packaged file wherever a checkpoint path is accepted;
a local file of the same name wins; a missing asset is a one-line error naming the file."""
import os

import pytest
import torch

import spherehead
from spherehead import assets, camera
from spherehead.errors import CheckpointError


def test_names_resolve_and_files_win(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert assets.resolve_network("net.safetensors") == "net.safetensors"   # not a bundled name: unchanged
    (tmp_path / "demo").write_bytes(b"local")
    assert assets.resolve_network("demo") == "demo"                         # a local file named demo wins


def test_missing_asset_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setitem(assets.BUNDLED, "demo", "not-there.safetensors")
    with pytest.raises(CheckpointError, match="not-there.safetensors.*missing from this installation"):
        spherehead.load_network("demo")
    with pytest.raises(CheckpointError, match="no such bundled network"):
        assets.bundled_path("nope")


@pytest.fixture(scope="module", params=sorted(assets.BUNDLED))
def bundled(request):
    name = request.param
    if not os.path.isfile(os.path.join(os.path.dirname(assets.__file__), assets.BUNDLED[name])):
        pytest.fail(f"the bundled network {name} is missing from the checkout (spherehead/assets)")
    return name, spherehead.load_network(name)


def test_bundled_networks_are_small_and_render(bundled):
    name, demo = bundled
    assert sum(os.path.getsize(assets.bundled_path(n)) for n in assets.BUNDLED) <= 20 * 2**20
    G = demo["G_ema"]
    assert G.img_resolution == 128 and demo["metadata"]["cfg"] == "demo-wide-128"
    assert demo["metadata"]["cur_nimg"] > 0 and "D" in demo
    # The comparison arm is the demo trained without ViCo, and nothing else.
    assert demo["metadata"]["training_options"]["loss_opts"]["vico_weight"] == (0.0 if name == "demo-novico" else 1.0)
    z = torch.from_numpy(__import__("numpy").random.RandomState(0).randn(2, G.z_dim)).float()
    c = torch.cat([camera.make_label(yaw=0.0), camera.make_label(yaw=3.1)])
    with torch.no_grad():
        out = G(z, c, noise_mode="const")
    img = out["image"]
    assert img.shape == (2, 3, 128, 128) and torch.isfinite(img).all()
    assert img.std() > 0.05                        # not a flat image
    assert (img[0] - img[1]).abs().mean() > 0.02   # different seeds and views differ


def test_train_resume_accepts_a_bundled_name(tmp_path, monkeypatch):
    """train.py --resume demo fine-tunes from the bundled file; a local file of that name still wins."""
    import sys
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import click
    import train
    assert train._resume_arg("demo-novico") == assets.bundled_path("demo-novico")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "demo").write_bytes(b"local")
    assert train._resume_arg("demo") == "demo"
    with pytest.raises(click.ClickException, match="no such file"):
        train._resume_arg("nope")
