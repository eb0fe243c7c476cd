"""Datasets: the validator names every kind of bad file; pack; HeadDataset items, flips, back repeat, cameras."""
import io
import json
import pickle
import zipfile
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch
from click.testing import CliRunner

from spherehead.camera import MIRROR_INDICES, make_label
from training.dataset import HeadDataset
from training.dataset_check import check_label, validate_dataset
from training.dataset_io import DatasetError
from spherehead.parsing import CLASS_INDEX as CI
from tools.dataset_tool import PackError, main, pack

YAWS = (0.0, 45.0, 120.0, 180.0)
SIZE = 32


def _png(array) -> bytes:
    buf = io.BytesIO()
    PIL.Image.fromarray(np.asarray(array, dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def _labels(root: Path):
    return json.loads((root / "imgs" / "dataset.json").read_text())["labels"]


def _set_labels(root: Path, labels) -> None:
    (root / "imgs" / "dataset.json").write_text(json.dumps({"labels": labels}))


def _make_source(root: Path, size: int = SIZE):
    """PanoHead-layout source: root/imgs (+ dataset.json), root/masks, root/parsing; one image per yaw."""
    rng = np.random.default_rng(0)
    labels = []
    for i, yaw in enumerate(YAWS):
        name = f"sub/img{i}.png"
        _write(root / "imgs" / name, _png(rng.integers(0, 256, (size, size, 3))))
        _write(root / "masks" / name, _png(rng.integers(0, 256, (size, size))))
        parsing = np.full((size, size), CI["skin"], dtype=np.uint8)
        parsing[:, : size // 2] = CI["l_eye"]          # left half: a left/right class, for the flip test
        _write(root / "parsing" / name, _png(parsing))
        label = make_label(yaw, 10.0, degrees=True)[0].tolist()
        labels.append([name, [str(v) for v in label] if i == 1 else label])   # numbers as strings too
    _set_labels(root, labels)
    return root / "imgs", root / "masks", root / "parsing"


@pytest.fixture
def source(tmp_path):
    return _make_source(tmp_path / "src")


def _issues(report):
    return [(i.file, i.reason) for i in report.errors]


def _assert_issue(report, file, reason):
    assert not report.ok
    hits = [(f, r) for f, r in _issues(report) if f.endswith(file) and reason in r]
    assert hits, f"expected {file}: ...{reason}... in {_issues(report)}"


def test_good_source_validates_and_packs(source, tmp_path):
    report = validate_dataset(*source)
    assert report.ok, report.format()
    assert report.counts == {"labels": 4, "images": 4, "masks": 4, "parsing": 4}
    dest = tmp_path / "out.zip"
    summary = pack(source[0], dest, 16, masks=source[1], parsing=source[2])
    assert summary["images"] == 4 and dest.exists()
    packed = validate_dataset(dest)
    assert packed.ok and dict(packed.sizes) == {(16, 16): 4}, packed.format()
    with zipfile.ZipFile(dest) as z:
        assert "images/sub/img0.png" in z.namelist() and "parsing/sub/img3.png" in z.namelist()


# ---- one test per kind of bad file: (mutation of the good source, file named, reason) ----------------------

def _label_entry(root, i, fn):
    labels = _labels(root)
    labels[i][1] = fn(list(labels[i][1]))
    _set_labels(root, labels)


def _with(idx_values):
    def fn(v):
        for i, x in idx_values:
            v[i] = x
        return v
    return fn


def _neg_first_column(v):
    for i in (0, 4, 8):
        v[i] = -float(v[i])
    return v


BAD_CASES = {
    "unlabelled image": (lambda r: _write(r / "imgs" / "extra.png", _png(np.zeros((SIZE, SIZE, 3)))),
                         "extra.png", "has no label"),
    "label for missing image": (lambda r: _set_labels(r, _labels(r) + [["ghost.png", _labels(r)[0][1]]]),
                                "ghost.png", "no such image"),
    "duplicate label": (lambda r: _set_labels(r, _labels(r) + [_labels(r)[0]]), "sub/img0.png", "duplicate label"),
    "non-finite": (lambda r: _label_entry(r, 0, _with([(3, "nan")])), "sub/img0.png", "not finite"),
    "not a number": (lambda r: _label_entry(r, 0, _with([(5, "abc")])), "sub/img0.png", "is not a number"),
    "wrong count": (lambda r: _label_entry(r, 2, lambda v: v[:24]), "sub/img2.png", "has 24 numbers, expected 25"),
    "not orthonormal": (lambda r: _label_entry(r, 0, lambda v: [x * 1.1 if i < 11 and i % 4 != 3 else x
                                                                for i, x in enumerate(v)]),
                        "sub/img0.png", "not orthonormal"),
    "reflection": (lambda r: _label_entry(r, 0, _neg_first_column), "sub/img0.png", "reflection"),
    "bottom row": (lambda r: _label_entry(r, 0, _with([(15, 2.0)])), "sub/img0.png", "bottom row"),
    "skew": (lambda r: _label_entry(r, 0, _with([(17, 0.3)])), "sub/img0.png", "skew"),
    "negative focal": (lambda r: _label_entry(r, 0, _with([(16, -4.2647)])), "sub/img0.png", "positive"),
    "unnormalised intrinsics": (lambda r: _label_entry(r, 0, _with([(18, 256.0), (21, 256.0)])),
                                "sub/img0.png", "principal point"),
    "unreadable image": (lambda r: _write(r / "imgs/sub/img1.png", _png(np.zeros((SIZE, SIZE, 3)))[:60]),
                         "sub/img1.png", "cannot be read as an image"),
    "non-square image": (lambda r: _write(r / "imgs/sub/img1.png", _png(np.zeros((SIZE, SIZE + 8, 3)))),
                         "sub/img1.png", "not square"),
    "mask missing": (lambda r: (r / "masks/sub/img2.png").unlink(), "sub/img2.png", "no mask"),
    "mask size": (lambda r: _write(r / "masks/sub/img2.png", _png(np.zeros((16, 16)))),
                  "masks/sub/img2.png", "mask is 16x16 but its image is 32x32"),
    "mask channels": (lambda r: _write(r / "masks/sub/img2.png", _png(np.zeros((SIZE, SIZE, 3)))),
                      "masks/sub/img2.png", "single-channel"),
    "orphan mask": (lambda r: _write(r / "masks/sub/other.png", _png(np.zeros((SIZE, SIZE)))),
                    "masks/sub/other.png", "matches no image"),
    "parsing missing": (lambda r: (r / "parsing/sub/img3.png").unlink(), "sub/img3.png", "no parsing"),
    "parsing size": (lambda r: _write(r / "parsing/sub/img3.png", _png(np.zeros((8, 8)))),
                     "parsing/sub/img3.png", "parsing is 8x8"),
    "parsing class range": (lambda r: _write(r / "parsing/sub/img3.png", _png(np.full((SIZE, SIZE), 25))),
                            "parsing/sub/img3.png", "class indices [25] are out of range"),
    "missing dataset.json": (lambda r: (r / "imgs" / "dataset.json").unlink(), "dataset.json", "missing"),
    "invalid dataset.json": (lambda r: (r / "imgs" / "dataset.json").write_text("{labels: oops"),
                             "dataset.json", "not valid JSON"),
}


@pytest.mark.parametrize("kind", list(BAD_CASES))
def test_validator_catches(kind, tmp_path):
    images, masks, parsing = _make_source(tmp_path / "src")
    mutate, file, reason = BAD_CASES[kind]
    mutate(tmp_path / "src")
    _assert_issue(validate_dataset(images, masks, parsing), file, reason)


def test_validator_sizes_of_a_training_set(source):
    _write(source[0] / "sub/img1.png", _png(np.zeros((64, 64, 3))))
    _write(source[1] / "sub/img1.png", _png(np.zeros((64, 64))))
    _write(source[2] / "sub/img1.png", _png(np.zeros((64, 64))))
    _assert_issue(validate_dataset(*source), "sub/img1.png", "all images must have one size")
    assert validate_dataset(*source, same_size=False).ok        # fine as a pack source
    for folder, shape in zip(source, ((24, 24, 3), (24, 24), (24, 24))):
        for i in range(4):
            _write(folder / f"sub/img{i}.png", _png(np.zeros(shape)))
    _assert_issue(validate_dataset(*source), "sub/img0.png", "not a power of two")


def test_check_label_warns_for_camera_not_at_origin():
    label = make_label(0.0, 0.0, lookat=(1.0, 0.0, 0.0))[0].tolist()
    errors, warnings = check_label(label)
    assert not errors and any("away from the world origin" in w for w in warnings)


def test_cli_validate_reports_every_file_and_pack_writes_nothing(source, tmp_path):
    _write(source[0] / "extra.png", _png(np.zeros((SIZE, SIZE, 3))))
    _write(source[1] / "sub/img2.png", _png(np.zeros((16, 16))))
    runner = CliRunner()
    result = runner.invoke(main, ["validate", str(source[0]), "--masks", str(source[1]), "--parsing", str(source[2])])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "extra.png: image has no label" in result.output and "masks/sub/img2.png: mask is 16x16" in result.output
    dest = tmp_path / "out.zip"
    result = runner.invoke(main, ["pack", "--source", str(source[0]), "--dest", str(dest), "--resolution", "16",
                                  "--masks", str(source[1]), "--parsing", str(source[2])])
    assert result.exit_code == 1 and not dest.exists() and not list(tmp_path.glob(".out.zip*"))
    assert "extra.png" in result.output and "nothing written" in result.output
    with pytest.raises(PackError):
        pack(source[0], dest, 16, masks=source[1], parsing=source[2])


def test_cli_pack_and_validate_ok(source, tmp_path):
    dest = tmp_path / "out.zip"
    runner = CliRunner()
    args = ["pack", "--source", str(source[0]), "--dest", str(dest), "--resolution", "32", "--masks", str(source[1]),
            "--parsing", str(source[2])]
    result = runner.invoke(main, args)
    assert result.exit_code == 0, result.output
    assert runner.invoke(main, ["validate", str(dest)]).exit_code == 0
    again = runner.invoke(main, args)
    assert again.exit_code == 1 and "already exists" in again.output and "Traceback" not in again.output


# ---- HeadDataset ---------------------------------------------------------------------------------------------

def _packed(source, tmp_path):
    dest = tmp_path / "packed.zip"
    pack(source[0], dest, SIZE, masks=source[1], parsing=source[2])
    folder = tmp_path / "packed_dir"
    with zipfile.ZipFile(dest) as z:
        z.extractall(folder)
    return dest, folder


def _same_item(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert np.array_equal(np.asarray(a[k]), np.asarray(b[k])), k


def test_zip_folder_and_panohead_layout_give_identical_items(source, tmp_path):
    zip_path, folder = _packed(source, tmp_path)
    sets = [HeadDataset(zip_path, xflip=True), HeadDataset(folder, xflip=True),
            HeadDataset(source[0], xflip=True, mask_path=source[1], parsing_path=source[2])]
    assert all(len(d) == 8 and d.resolution == SIZE and d.has_masks and d.has_parsing for d in sets)
    for i in range(8):
        _same_item(sets[0][i], sets[1][i])
        _same_item(sets[0][i], sets[2][i])
    item = sets[0][0]
    assert item["image"].shape == (3, SIZE, SIZE) and item["image"].dtype == np.uint8
    assert item["mask"].shape == (1, SIZE, SIZE) and item["parsing"].shape == (SIZE, SIZE)
    assert item["label"].shape == (25,) and item["label"].dtype == np.float32
    _same_item(pickle.loads(pickle.dumps(sets[0]))[3], sets[0][3])   # DataLoader workers get a copy
    batch = next(iter(torch.utils.data.DataLoader(sets[0], batch_size=4)))
    assert batch["image"].shape == (4, 3, SIZE, SIZE) and batch["label"].shape == (4, 25)


def test_flip_mirrors_label_image_mask_and_parsing_classes(source):
    ds = HeadDataset(source[0], xflip=True, mask_path=source[1], parsing_path=source[2])
    n = ds.num_raw
    for i in range(n):
        a, b = ds[i], ds[i + n]
        assert not a["xflip"] and b["xflip"] and a["raw_idx"] == b["raw_idx"]
        assert np.array_equal(b["image"], a["image"][:, :, ::-1])
        assert np.array_equal(b["mask"], a["mask"][:, :, ::-1])
        sign = np.ones(25, dtype=np.float32)
        sign[list(MIRROR_INDICES)] = -1
        assert np.array_equal(b["label"], a["label"] * sign)
        assert (a["parsing"][:, : SIZE // 2] == CI["l_eye"]).all()
        assert (b["parsing"][:, SIZE // 2:] == CI["r_eye"]).all() and (b["parsing"][:, : SIZE // 2] == CI["skin"]).all()
        assert np.array_equal(ds.get_label(i + n), a["label"])        # un-mirrored for generator cameras


@pytest.mark.parametrize("back_yaw_deg,num_back", [(90.0, 2), (150.0, 1), (181.0, 0)])
def test_back_repeat_counts_by_yaw(source, back_yaw_deg, num_back):
    ds = HeadDataset(source[0], back_repeat=3, back_yaw_deg=back_yaw_deg, load_masks=False, load_parsing=False)
    assert len(ds) == (4 - num_back) + 3 * num_back
    names = [ds.raw_name(i) for i in range(len(ds))]
    assert names.count("sub/img3.png") == (3 if num_back else 1)     # yaw 180
    assert "mask" not in ds[0] and "parsing" not in ds[0]
    flipped = HeadDataset(source[0], back_repeat=3, back_yaw_deg=back_yaw_deg, xflip=True)
    assert len(flipped) == 2 * len(ds)


def test_gen_cameras_labels_and_subsets(source):
    ds = HeadDataset(source[0], xflip=True, back_repeat=4)
    raw = np.stack([HeadDataset(source[0]).get_label(i) for i in range(4)])
    cams = ds.sample_gen_cameras(64, generator=torch.Generator().manual_seed(1))
    assert cams.shape == (64, 25) and cams.dtype == torch.float32
    assert all(any(np.array_equal(c, r) for r in raw) for c in cams.numpy())   # never mirrored
    assert torch.equal(cams, ds.sample_gen_cameras(64, generator=torch.Generator().manual_seed(1)))
    np.testing.assert_allclose(ds.label_std, raw.std(0), rtol=1e-6, atol=1e-7)
    assert len(HeadDataset(source[0], max_size=2, random_seed=3)) == 2
    assert HeadDataset(source[0], use_labels=False)[0]["label"].shape == (0,)


def test_dataset_errors_name_the_file(source):
    _write(source[0] / "sub/img2.png", _png(np.zeros((64, 64, 3))))
    with pytest.raises(DatasetError, match="img2.png"):
        HeadDataset(source[0])
    with pytest.raises(DatasetError, match="img0.png.*16x16"):
        HeadDataset(source[0], resolution=16)
    (source[1] / "sub/img1.png").unlink()
    _write(source[0] / "sub/img2.png", _png(np.zeros((SIZE, SIZE, 3))))
    with pytest.raises(DatasetError, match="img1.png"):
        HeadDataset(source[0], mask_path=source[1])
    (source[0] / "dataset.json").unlink()
    with pytest.raises(DatasetError, match="dataset.json"):
        HeadDataset(source[0])
