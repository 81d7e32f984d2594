"""Hostile and broken files, in training data (the validate stage) and given to `annlab predict`:
each refused in one line naming the file, never a traceback; nothing in them is executed."""

from __future__ import annotations

import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_owndata import digits_folder, refusal

from annlab.data import features
from annlab.errors import UserError
from annlab.params import parse_params
from annlab.serve import served
from conftest import REPO


def png_header(path: Path, width: int, height: int) -> Path:
    """A PNG that claims `width` x `height` pixels (its header; no pixel data worth decoding)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    body = chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + body)
    return path


def hostile_images(folder: Path) -> dict[str, str]:
    """Each broken image written into `folder`, with what its refusal must say."""
    good = folder / "good.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (8, 8), dtype=np.uint8)).save(good)
    (folder / "truncated.png").write_bytes(good.read_bytes()[: len(good.read_bytes()) // 2])
    (folder / "empty.png").write_bytes(b"")
    (folder / "noise.png").write_bytes(bytes(range(256)) * 4)
    Image.new("L", (8, 8)).save(folder / "animation.gif")
    (folder / "animation.gif").rename(folder / "gif.png")
    png_header(folder / "bomb.png", 20_000, 20_000)
    png_header(folder / "large.png", 10_000, 10_000)  # over Pillow's limit, under twice it
    good.unlink()
    return {
        "truncated.png": "cannot be decoded as an image",
        "empty.png": "not an image",
        "noise.png": "not an image",
        "gif.png": "a GIF image; allowed: PNG or JPEG files only",
        "bomb.png": "20000x20000 pixels (400,000,000), over the limit of 89,478,485 pixels",
        "large.png": "10000x10000 pixels (100,000,000), over the limit",
    }


def hostile_npz(folder: Path) -> dict[str, str]:
    """Each broken .npz written into `folder`, with what its refusal must say."""
    np.savez(folder / "pickled.npz", x=np.array([{"a": 1}] * 4, dtype=object), y=np.zeros(4))
    (folder / "text.npz").write_text("x,y\n1,2\n")
    np.savez(folder / "whole.npz", x=np.zeros((4, 8, 8)), y=np.zeros(4))
    (folder / "cut.npz").write_bytes((folder / "whole.npz").read_bytes()[:300])
    (folder / "whole.npz").unlink()
    return {
        "pickled.npz": "holds pickled Python objects, which annlab never loads",
        "text.npz": "not a NumPy .npz file (it is no zip archive)",
        "cut.npz": "not a NumPy .npz file",
    }


def test_broken_images_in_training_data_are_refused_naming_the_file(tmp_path: Path) -> None:
    for name, says in hostile_images(tmp_path).items():
        folder = tmp_path / name.replace(".", "-")
        digits_folder(folder, per_class=3)
        (tmp_path / name).rename(folder / "three" / name)
        message = refusal(parse_params({"data": {"dataset": "images", "path": str(folder)}}))
        assert f"{folder / 'three' / name}: " in message and says in message, (name, message)


def test_broken_npz_training_data_is_refused_naming_the_file(tmp_path: Path) -> None:
    for name, says in hostile_npz(tmp_path).items():
        message = refusal(parse_params({"data": {"dataset": "npz", "path": str(tmp_path / name)}}))
        assert message.startswith(f"{tmp_path / name}: ") and says in message, (name, message)


def _image_predictor() -> served.Predictor:
    """A digits model's inputs and preprocessing, without its network (reading needs none)."""
    x = np.arange(10 * 64).reshape(10, 8, 8) % 17
    dataset = {"kind": "images", "input_shape": [8, 8], "class_names": list("0123456789"), "image_size": None}
    return served.Predictor(None, features.fit_array("standard", x), dataset)


def test_broken_files_given_to_predict_are_refused_naming_the_file(tmp_path: Path) -> None:
    predictor = _image_predictor()
    cases = {**hostile_images(tmp_path), **hostile_npz(tmp_path)}
    for name, says in cases.items():
        with pytest.raises(UserError) as err:
            served.read_inputs(tmp_path / name, predictor)
        assert str(err.value).startswith(f"{tmp_path / name}: ") and says in str(err.value), (name, err.value)


def test_validate_refuses_a_decompression_bomb_in_one_line(tmp_path: Path) -> None:
    digits_folder(tmp_path / "data/own", per_class=3)
    png_header(tmp_path / "data/own/five/bomb.png", 20_000, 20_000)
    text = (REPO / "params.yaml").read_text().replace("dataset: digits ", "dataset: images ")
    (tmp_path / "params.yaml").write_text(text)
    argv = [sys.executable, "-m", "annlab.stages.validate", "--params", "params.yaml", "--stamp", "ok"]
    proc = subprocess.run(
        argv, cwd=tmp_path, capture_output=True, text=True, env={"PYTHONPATH": str(REPO / "src")}
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("error: data/own/five/bomb.png: 20000x20000 pixels"), proc.stderr
    assert len(proc.stderr.splitlines()) == 1 and "Traceback" not in proc.stderr
    assert not (tmp_path / "ok").exists()


@pytest.mark.slow
def test_predict_refuses_hostile_files_in_one_line_with_status_2(tmp_path: Path) -> None:
    """Through the command a user runs, on a model folder (a tiny untrained digits network)."""
    import keras

    folder = tmp_path / "model"
    folder.mkdir()
    predictor = _image_predictor()
    network = keras.Sequential([keras.Input((64,)), keras.layers.Dense(10, activation="softmax")])
    network.save(folder / served.MODEL_FILE)
    (folder / served.PREPROCESSING).write_text(__import__("json").dumps(predictor.preprocessing))
    (folder / served.DATASET).write_text(__import__("json").dumps(predictor.dataset))
    cases = {**hostile_images(tmp_path), **hostile_npz(tmp_path)}
    env = {"PYTHONPATH": str(REPO / "src"), "TF_CPP_MIN_LOG_LEVEL": "3"}
    for name in ("bomb.png", "pickled.npz", "cut.npz", "truncated.png"):
        argv = [sys.executable, "-m", "annlab", "predict", "--model", str(folder), "--input", name]
        proc = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, env=env)
        assert proc.returncode == 2, proc.stderr
        assert proc.stderr.startswith(f"error: {name}: ") and cases[name] in proc.stderr, proc.stderr
        assert len(proc.stderr.splitlines()) == 1 and "Traceback" not in proc.stderr
