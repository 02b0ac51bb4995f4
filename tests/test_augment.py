"""Mirrored copies for small calibration sets (darknet2tflite/int8/augment.py)."""
from __future__ import annotations

import numpy as np

from darknet2tflite.int8.augment import MIRROR_BELOW, mirror_augment, mirrored_count
from darknet2tflite.int8.calibration import calibrate, load_calibration


def test_sets_below_the_threshold_get_one_mirror_of_every_photo():
    x = np.random.default_rng(0).random((5, 4, 6, 3), dtype=np.float32)
    out = mirror_augment(x, below=8)
    assert out.shape == (10, 4, 6, 3)
    assert np.array_equal(out[:5], x)                    # originals first, unchanged
    assert np.array_equal(out[5:], x[:, :, ::-1, :])     # then their left-right mirrors
    assert mirrored_count(5, 8) == 5 and mirrored_count(7, 8) == 7
    # at or above the threshold, and with it off: the very same array, nothing added
    assert mirrored_count(8, 8) == 0
    assert mirror_augment(x, below=5) is x and mirror_augment(x, below=0) is x
    # the default mirrors one 2-fold half of the 86 shared photos, not the whole set
    assert mirrored_count(43) == 43 and mirrored_count(86) == 0


def test_real_calibration_array_mirrors_are_darknet_preprocessed_photos(
        tmp_path, yolov4_tiny, sample_images, monkeypatch):
    """The mirror of a preprocessed photo is the preprocessed mirrored photo (stretch
    resize commutes with a horizontal flip), so mirrors are valid calibration inputs."""
    import cv2

    from darknet2tflite.images import load_rgb, preprocess
    monkeypatch.setenv("DARKNET2TFLITE_CACHE", str(tmp_path / "cache"))
    arr = load_calibration(calibrate(yolov4_tiny[0], sample_images, None, 4, progress=None).npy)
    out = mirror_augment(arr)
    assert len(out) == 2 * len(arr) == len(arr) + mirrored_count(len(arr), MIRROR_BELOW)
    photo = sorted(sample_images.glob("*.jpg"))[0]
    flipped = tmp_path / "flipped.png"
    cv2.imwrite(str(flipped), cv2.flip(cv2.imread(str(photo)), 1))
    a = preprocess(load_rgb(flipped), 416, 416, False)
    b = preprocess(load_rgb(photo), 416, 416, False)[:, ::-1, :]
    assert np.abs(a - b).max() < 0.02
