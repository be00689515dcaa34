import cv2
import numpy as np
import pytest

from models.config import ModelConfig
from models.preprocess import crop, pad_square, preprocess, preprocess_batch, scan_area


def ultrasound_like(rng, height=240, width=320, box=(60, 30, 200, 180)):
    """A bright speckled scan area on black with burned-in text around it."""
    frame = np.zeros((height, width), np.uint8)
    x, y, w, h = box
    frame[y:y + h, x:x + w] = rng.integers(40, 255, (h, w), dtype=np.uint8)
    cv2.putText(frame, "FH 5MHz", (2, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.4, 255, 1)
    cv2.putText(frame, "D 12cm", (width - 58, height - 6), cv2.FONT_HERSHEY_SIMPLEX, 0.4, 255, 1)
    return frame


@pytest.mark.parametrize("shape", [(120, 160), (120, 160, 1), (120, 160, 3), (300, 90, 3)])
def test_every_input_shape_gives_the_model_input(shape, rng):
    config = ModelConfig(backbone="tiny", image_size=64, roi="none")
    frame = rng.integers(0, 256, shape, dtype=np.uint8)
    out = preprocess(frame, config)
    assert out.shape == (64, 64, 3)
    assert out.dtype == np.float32
    assert out.flags.c_contiguous


def test_auto_roi_drops_borders_and_text(rng):
    frame = ultrasound_like(rng)
    x, y, w, h = scan_area(frame)
    assert abs(x - 60) <= 3 and abs(y - 30) <= 3
    assert abs(w - 200) <= 6 and abs(h - 180) <= 6
    cropped = crop(frame, "auto")
    assert cropped.shape[0] == h and cropped.shape[1] == w


def test_blank_frame_keeps_the_whole_frame():
    assert scan_area(np.zeros((50, 70), np.uint8)) == (0, 0, 70, 50)


def test_aspect_ratio_is_kept_by_padding():
    image = np.full((40, 100), 200, np.uint8)
    square = pad_square(image)
    assert square.shape == (100, 100)
    rows = np.flatnonzero(square.max(axis=1))
    assert len(rows) == 40 and rows[0] == 30
    config = ModelConfig(backbone="tiny", image_size=50, roi="none")
    out = preprocess(image, config)
    bright = np.flatnonzero(out[:, :, 0].max(axis=1) > 0)
    assert len(bright) == 20  # 40 of 100 rows -> 20 of 50: content not stretched


@pytest.mark.parametrize("backbone, low, high", [
    ("tiny", -1.0, 1.0),
    ("mobilenetv2", -1.0, 1.0),
    ("efficientnetb0", 0.0, 255.0),
])
def test_value_range_is_the_backbones(backbone, low, high):
    config = ModelConfig(backbone=backbone, image_size=48, roi="none")
    frame = np.zeros((48, 48), np.uint8)
    frame[:, 24:] = 255
    out = preprocess(frame, config)
    assert out.min() == pytest.approx(low) and out.max() == pytest.approx(high)


def test_vgg19_is_caffe_normalised_from_bgr():
    config = ModelConfig(backbone="vgg19", image_size=32, roi="none")
    frame = np.zeros((32, 32, 3), np.uint8)
    frame[..., 0] = 255  # blue in OpenCV's BGR order
    out = preprocess(frame, config)
    # Caffe order is BGR with the ImageNet means subtracted.
    np.testing.assert_allclose(out[0, 0], [255 - 103.939, -116.779, -123.68], atol=1e-4)


def test_fixed_roi_and_outside_frame(rng):
    frame = rng.integers(0, 256, (100, 100), dtype=np.uint8)
    assert crop(frame, (10, 20, 30, 40)).shape == (40, 30)
    with pytest.raises(ValueError, match="outside the frame"):
        crop(frame, (200, 200, 10, 10))


def test_batch_equals_one_by_one(rng):
    config = ModelConfig(backbone="tiny", image_size=48)
    frames = [ultrasound_like(rng) for _ in range(3)] + [rng.integers(0, 256, (80, 60, 3), dtype=np.uint8)]
    batch = preprocess_batch(frames, config)
    assert batch.shape == (4, 48, 48, 3)
    for frame, row in zip(frames, batch):
        np.testing.assert_array_equal(preprocess(frame, config), row)


@pytest.mark.parametrize("frame, message", [
    (np.zeros((10, 10), np.float32), "must be uint8"),
    (np.zeros((10, 10, 2), np.uint8), "must be (H, W), (H, W, 1) or (H, W, 3)"),
    (np.zeros((0, 10), np.uint8), "empty"),
])
def test_bad_frames_are_named(frame, message):
    with pytest.raises(ValueError) as info:
        preprocess(frame, ModelConfig(backbone="tiny", image_size=48))
    assert message in str(info.value)


@pytest.mark.parametrize("shape, message", [
    # Padded to a square, 1 MB would ask for 1 TB.
    ((1, 1_000_000), "frame of shape (1, 1000000) is too large: at most 8192 pixels a side"),
    ((8193, 4000, 3), "frame of shape (8193, 4000, 3) is too large"),
    ((2, 4000), "frame of shape (2, 4000) is too thin: its aspect ratio may be at most 8:1 (padding it to a square "
                "would take 4000x4000 pixels)"),
    ((900, 100, 3), "is too thin"),
])
def test_frames_whose_padding_would_be_huge_are_refused_before_it(shape, message):
    frame = np.zeros(shape, np.uint8)
    for call in (lambda: preprocess(frame, ModelConfig(backbone="tiny", image_size=48)),
                 lambda: scan_area(frame), lambda: crop(frame, "none")):
        with pytest.raises(ValueError) as info:
            call()
        assert message in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("shape", [(8, 64), (64, 8, 3), (8192, 1024)])
def test_frames_at_the_bounds_are_taken(shape):
    assert preprocess(np.full(shape, 90, np.uint8), ModelConfig(backbone="tiny", image_size=48)).shape == (48, 48, 3)
