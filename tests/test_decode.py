"""Faithful decoding: bit depth, alpha, palette, CMYK, EXIF orientation and size limits, on every data path."""

from __future__ import annotations

import os
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pefs.config import TrainConfig, TuneConfig
from pefs.data import from_arrays, load_dataset
from pefs.data.decoding import ENV_MAX_PIXELS, decode_image, set_max_image_pixels
from pefs.errors import PefsError
from pefs.protocols.run import tune
from tests.conftest import FAST, assert_user_error, cli


def _folder(root: Path, depth: int) -> Path:
    """A 3-class folder of 24x24 grey images, as 8-bit or (the same values x 257) 16-bit PNGs."""
    rng = np.random.default_rng(0)
    for c, name in enumerate(["a", "b", "c"]):
        (root / name).mkdir(parents=True)
        for i in range(6):
            arr = rng.integers(0, 80, (24, 24), dtype=np.uint8) + np.uint8(60 * c)
            img = Image.fromarray(arr) if depth == 8 else Image.fromarray(arr.astype(np.uint16) * 257)
            img.save(root / name / f"{i}.png")
    return root


def test_16_bit_pngs_decode_to_the_same_pixels_and_score_the_same(tmp_path):
    eight, sixteen = _folder(tmp_path / "d8", 8), _folder(tmp_path / "d16", 16)
    assert Image.open(next((sixteen / "a").glob("*.png"))).mode == "I;16"
    d8, d16 = load_dataset(str(eight)), load_dataset(str(sixteen))
    for i in range(len(d8.train)):
        assert np.array_equal(np.asarray(d8.train.image(i)), np.asarray(d16.train.image(i)))

    def score(data: Path) -> list[float]:
        cfg = TuneConfig(model="resnet18", pretrained=False, data=str(data), shots=2, seeds=(0, 1), img_size=32,
                         output=str(tmp_path / "out"), train=TrainConfig(epochs=2, progress=False))
        return tune(cfg)["accuracies"]

    assert score(eight) == score(sixteen)


def test_16_bit_tiff_and_arrays_are_scaled_not_clipped(tmp_path):
    arr = np.array([[0, 1000, 30000, 65535]], dtype=np.uint16)
    Image.fromarray(arr).save(tmp_path / "x.tif")
    got = np.asarray(decode_image(tmp_path / "x.tif", "x.tif"))[..., 0]
    assert got.tolist() == [[0, 4, 117, 255]]
    images = from_arrays(np.stack([arr, arr]), [0, 1])
    assert np.asarray(images.image(0))[..., 0].tolist() == [[0, 4, 117, 255]]
    floats = from_arrays(np.array([[[0.0, 0.5, 1.0]]], dtype=np.float32), [0])
    assert np.asarray(floats.image(0))[..., 0].tolist() == [[0, 128, 255]]


def test_alpha_is_composited_on_white_not_dropped(tmp_path):
    rgba = np.zeros((4, 4, 4), np.uint8)  # transparent black everywhere...
    rgba[0, 0] = (200, 10, 10, 255)  # ...but one opaque red pixel
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    got = np.asarray(decode_image(tmp_path / "a.png", "a.png"))
    assert got[0, 0].tolist() == [200, 10, 10] and got[1, 1].tolist() == [255, 255, 255]
    la = Image.fromarray(np.stack([np.full((2, 2), 40, np.uint8), np.zeros((2, 2), np.uint8)], -1), "LA")
    assert np.asarray(decode_image(la, "la"))[0, 0].tolist() == [255, 255, 255]


def test_palette_with_transparency_and_cmyk(tmp_path):
    pal = Image.new("P", (4, 4), 0)
    pal.putpalette([0, 0, 0, 0, 200, 0] + [0] * 762)
    pal.putpixel((1, 1), 1)
    pal.info["transparency"] = 0
    pal.save(tmp_path / "p.png", transparency=0)
    got = np.asarray(decode_image(tmp_path / "p.png", "p.png"))
    assert got[0, 0].tolist() == [255, 255, 255] and got[1, 1].tolist() == [0, 200, 0]
    Image.new("CMYK", (8, 8), (0, 255, 255, 0)).save(tmp_path / "c.jpg")  # pure red in CMYK
    r, g, b = np.asarray(decode_image(tmp_path / "c.jpg", "c.jpg")).reshape(-1, 3).mean(0)
    assert r > 200 and g < 60 and b < 60


def test_exif_orientation_is_applied(tmp_path):
    img = Image.new("RGB", (20, 10), (10, 10, 10))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to view
    img.save(tmp_path / "o.jpg", exif=exif)
    assert decode_image(tmp_path / "o.jpg", "o.jpg").size == (10, 20)


def _bomb_png(path: Path, side: int) -> None:
    """A valid PNG header claiming side x side pixels (the pixel data is never reached)."""
    Image.new("L", (8, 8)).save(path)
    data = bytearray(path.read_bytes())
    ihdr = data[12:29]  # b"IHDR" + 13 bytes of header
    ihdr[4:12] = struct.pack(">II", side, side)
    data[12:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(ihdr)) & 0xFFFFFFFF)
    path.write_bytes(bytes(data))


def test_oversized_image_is_named_with_the_limit(tmp_path, monkeypatch):
    _bomb_png(tmp_path / "bomb.png", 20000)
    with pytest.raises(PefsError, match=r"bomb.png.*20000x20000.*over the limit of 89,478,485.*--max-image-pixels"):
        decode_image(tmp_path / "bomb.png", "bomb.png")
    monkeypatch.setenv(ENV_MAX_PIXELS, "100")
    with pytest.raises(PefsError, match=r"11x11.*limit of 100"):
        decode_image(Image.new("RGB", (11, 11)), "small")
    set_max_image_pixels(121)
    assert decode_image(Image.new("RGB", (11, 11)), "small").size == (11, 11)
    with pytest.raises(PefsError, match="whole number >= 1, got 0"):
        set_max_image_pixels(0)


def test_decompression_bomb_in_a_folder_is_one_line_on_the_cli(tmp_path, image_folder):
    root = tmp_path / "data"
    shutil.copytree(image_folder, root / "train")
    shutil.copytree(image_folder, root / "test")
    _bomb_png(root / "test" / "cat" / "huge.png", 20000)
    args = ["tune", "--data", str(root), "--model", "resnet18", "--no-pretrained", "--shots", "2", *FAST,
            "--output", str(tmp_path / "out")]
    assert_user_error(cli(*args), "huge.png", "89,478,485", "--max-image-pixels")
    r = cli(*args, "--max-image-pixels", str(20000 * 20000))  # raised: now Pillow decodes, and the file is cut
    assert_user_error(r, "huge.png", "cannot decode")


def test_datasets_table_images_take_the_same_decoder(tmp_path):
    datasets = pytest.importorskip("datasets")
    arr = (np.arange(16, dtype=np.uint16).reshape(4, 4) * 4000)
    for i in range(4):
        Image.fromarray(arr).save(tmp_path / f"{i}.png")
    ds = datasets.Dataset.from_dict({"image": [str(tmp_path / f"{i}.png") for i in range(4)], "label": [0, 1, 0, 1]},
                                    features=datasets.Features({"image": datasets.Image(),
                                                                "label": datasets.ClassLabel(names=["x", "y"])}))
    ds.save_to_disk(str(tmp_path / "table"))
    loaded = load_dataset(str(tmp_path / "table"))
    assert loaded.source == "datasets table"
    got = np.asarray(loaded.train.image(0))[..., 0]
    assert got.max() == round(60000 / 257) and len(np.unique(got)) == 16  # scaled, not clipped to 255


def test_a_table_file_inside_an_image_folder_does_not_switch_loaders(image_folder):
    (image_folder / "cat" / "labels.csv").write_text("file,label\n0.png,cat\n")
    (image_folder / "dog" / "meta.jsonl").write_text('{"a": 1}\n')
    ds = load_dataset(str(image_folder))
    assert ds.source == "image folder" and ds.classes == ["cat", "dog", "fox"]
    r = cli("tune", "--data", str(image_folder), "--model", "resnet18", "--no-pretrained", "--shots", "2", *FAST,
            "--output", str(image_folder.parent / "out"))
    assert r.returncode == 0 and "(image folder, 3 classes)" in r.stdout, r.stderr  # says what it chose
    (image_folder / "index.parquet").write_bytes(b"PAR1")
    with pytest.raises(PefsError, match=r"ambiguous.*index.parquet"):
        load_dataset(str(image_folder))


def test_image_loader_errors_name_the_image():
    from pefs.data.sources import ImageSet

    def gone(i):
        raise FileNotFoundError(2, "No such file or directory")

    images = ImageSet(["a"], np.array([0]), ["lost.png"], gone)
    with pytest.raises(PefsError, match="lost.png"):
        images.image(0)


def test_a_runs_image_limit_holds_for_the_run_only(tmp_path, image_folder, monkeypatch):
    """``TuneConfig.max_image_pixels`` (``--max-image-pixels``) guards a library run too, and the process's limit
    is back as it was afterwards."""
    monkeypatch.delenv(ENV_MAX_PIXELS, raising=False)
    cfg = TuneConfig(data=str(image_folder), model="resnet18", pretrained=False, shots=2, img_size=32,
                     max_image_pixels=10, output=str(tmp_path / "out"), train=TrainConfig(epochs=1, progress=False))
    with pytest.raises(PefsError, match=r"over the limit of 10 "):
        tune(cfg)
    assert ENV_MAX_PIXELS not in os.environ
    with pytest.raises(PefsError, match="max image pixels must be a whole number >= 1, got 0"):
        TuneConfig(max_image_pixels=0).validate()
