import cv2
import numpy as np
import pytest

from covidseg.data.io import ImageReadError, MaskLabelError, lesion_mask, normalize_intensity, preprocess_image, preprocess_mask, read_image, read_mask


def test_read_8bit_16bit_and_rgb(tmp_path):
    g8 = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20
    cv2.imwrite(str(tmp_path / "g8.png"), g8)
    g16 = (np.arange(12, dtype=np.uint16).reshape(3, 4) * 1000)
    cv2.imwrite(str(tmp_path / "g16.png"), g16)
    rgb = np.dstack([g8, g8, g8])
    cv2.imwrite(str(tmp_path / "rgb.tif"), rgb)
    assert read_image(tmp_path / "g8.png").dtype == np.uint8
    np.testing.assert_array_equal(read_image(tmp_path / "g16.png"), g16)
    out = read_image(tmp_path / "rgb.tif")
    assert out.shape == (3, 4)
    np.testing.assert_array_equal(out, g8)


def test_unreadable_and_missing_files_name_the_file(tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png")
    with pytest.raises(ImageReadError, match="bad.png: unreadable or corrupt"):
        read_image(bad)
    with pytest.raises(ImageReadError, match="nope.png: file not found"):
        read_image(tmp_path / "nope.png")


def test_normalization_rules():
    u8 = np.array([[0, 51, 255]], np.uint8)
    assert normalize_intensity(u8)[0].tolist() == pytest.approx([0.0, 0.2, 1.0])
    u16 = np.array([[1000, 2000, 3000]], np.uint16)
    assert normalize_intensity(u16, "auto")[0].tolist() == pytest.approx([0.0, 0.5, 1.0])
    assert normalize_intensity(u16, "dtype")[0].tolist() == pytest.approx([1000 / 65535, 2000 / 65535, 3000 / 65535])
    assert normalize_intensity(u8, "minmax")[0].tolist() == pytest.approx([0.0, 0.2, 1.0])
    assert normalize_intensity(np.full((2, 2), 7, np.uint16)).tolist() == [[0.0, 0.0], [0.0, 0.0]]


def test_masks_binary_label_maps_need_lesion_labels(tmp_path):
    m = np.zeros((8, 8), np.uint8)
    m[2:6, 2:6] = 255
    cv2.imwrite(str(tmp_path / "m.png"), m)
    mask = read_mask(tmp_path / "m.png")
    assert mask.dtype == np.uint8 and set(np.unique(mask)) == {0, 1} and mask.sum() == 16
    small = preprocess_mask(mask, 4)
    assert small.dtype == np.uint8 and set(np.unique(small)) <= {0, 1} and small.sum() == 4
    cv2.imwrite(str(tmp_path / "01.png"), (m > 127).astype(np.uint8))  # {0,1} masks
    assert read_mask(tmp_path / "01.png").sum() == 16
    cv2.imwrite(str(tmp_path / "16.png"), (m > 127).astype(np.uint16) * 65535)  # {0, dtype max}
    assert read_mask(tmp_path / "16.png").sum() == 16
    assert read_mask(tmp_path / "01.png", lesion_labels=[2]).sum() == 0
    # a MedSeg-like label map: the old cut at 127 made it all background
    labels = np.zeros((8, 8), np.uint8)
    labels[0:2, :] = 1  # ground-glass, 16 px
    labels[2:3, :] = 2  # consolidation, 8 px
    labels[7, :] = 3  # effusion, not lesion
    cv2.imwrite(str(tmp_path / "labels.png"), labels)
    with pytest.raises(MaskLabelError, match=r"labels.png: mask has label values \{0, 1, 2, 3\}"):
        read_mask(tmp_path / "labels.png")
    assert read_mask(tmp_path / "labels.png", [1, 2]).sum() == 24
    assert np.array_equal(lesion_mask(labels, [3]), (labels == 3).astype(np.uint8))
    noisy = m.copy()
    noisy[0, 0] = 100  # JPEG-like grey levels are not guessed at either
    with pytest.raises(MaskLabelError, match=r"\{0, 100, 255\}"):
        lesion_mask(noisy)


def test_preprocess_image_shape_and_range():
    raw = (np.random.default_rng(0).random((37, 53)) * 255).astype(np.uint8)
    out = preprocess_image(raw, 32)
    assert out.shape == (32, 32) and out.dtype == np.float32
    assert 0.0 <= out.min() and out.max() <= 1.0


def test_soft_masks_keep_the_lesion_fraction():
    m = np.zeros((9, 9), np.uint8)
    m[0:3, 0:3] = 1  # one full output pixel of 3x3
    m[3, 3] = 1  # a lesion nearest-neighbour would drop or blow up
    soft = preprocess_mask(m, 3, soft=True)
    assert soft.dtype == np.float32 and 0.0 <= soft.min() and soft.max() <= 1.0
    assert soft[0, 0] == pytest.approx(1.0) and soft[1, 1] == pytest.approx(1 / 9)
    assert soft.sum() * 9 == pytest.approx(m.sum())


def voc_palette() -> list[int]:
    """The PASCAL VOC colour map (label 1 dark red, 2 dark green, ...), as VOC-style label maps carry."""
    out = []
    for i in range(256):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        out += [r, g, b]
    return out


def write_palette_png(path, labels: np.ndarray) -> None:
    from PIL import Image

    img = Image.fromarray(labels.astype(np.uint8), mode="P")
    img.putpalette(voc_palette())
    img.save(path)


def test_palette_png_label_maps_are_read_by_label_not_colour(tmp_path):
    """Labels {0, 1, 2} in a VOC-palette PNG: a grayscale conversion reads them as {0, 38, 75}."""
    from PIL import Image

    from covidseg.data.io import read_label_map

    labels = np.zeros((6, 8), np.uint8)
    labels[1:3, 2:6] = 1
    labels[4, :] = 2
    write_palette_png(tmp_path / "p.png", labels)
    assert Image.open(tmp_path / "p.png").mode == "P"
    stored = read_label_map(tmp_path / "p.png")
    np.testing.assert_array_equal(stored, labels)
    np.testing.assert_array_equal(read_mask(tmp_path / "p.png", [1, 2]), (labels > 0).astype(np.uint8))
    with pytest.raises(MaskLabelError, match=r"label values \{0, 1, 2\}"):
        read_mask(tmp_path / "p.png")
    # 16-bit and 32-bit label maps keep their values; grey saved as RGB is read as one channel
    cv2.imwrite(str(tmp_path / "l16.png"), labels.astype(np.uint16) * 1000)
    assert read_label_map(tmp_path / "l16.png").dtype == np.uint16
    assert sorted(np.unique(read_label_map(tmp_path / "l16.png")).tolist()) == [0, 1000, 2000]
    Image.fromarray(labels.astype(np.int32), mode="I").save(tmp_path / "l32.tif")
    np.testing.assert_array_equal(read_label_map(tmp_path / "l32.tif"), labels)
    cv2.imwrite(str(tmp_path / "grey_rgb.png"), np.dstack([(labels.astype(np.uint16) * 255 // 2).astype(np.uint8)] * 3))
    assert sorted(np.unique(read_label_map(tmp_path / "grey_rgb.png")).tolist()) == [0, 127, 255]
    # a mask drawn in colours has no stored labels: refused, naming the file
    colour = np.zeros((6, 8, 3), np.uint8)
    colour[labels == 1] = (0, 0, 255)
    cv2.imwrite(str(tmp_path / "colour.png"), colour)
    with pytest.raises(ImageReadError, match=r"colour.png: a colour \(RGB\) mask"):
        read_label_map(tmp_path / "colour.png")


def test_grey_level_masks_get_their_own_message(tmp_path):
    """A JPEG mask has hundreds of grey levels: no label list describes it."""
    m = np.zeros((64, 64), np.uint8)
    cv2.circle(m, (32, 32), 20, 255, -1, lineType=cv2.LINE_AA)
    m = cv2.GaussianBlur(m, (9, 9), 3)
    cv2.imwrite(str(tmp_path / "m.jpg"), m, [cv2.IMWRITE_JPEG_QUALITY, 70])
    with pytest.raises(MaskLabelError) as err:
        read_mask(tmp_path / "m.jpg")
    message = str(err.value)
    assert "m.jpg: mask holds" in message and "grey levels" in message and "lesion_labels" not in message


@pytest.mark.parametrize("source", [512, 300, 64])
def test_mask_targets_stay_aligned_with_their_image(source):
    """Issue 32: a mask resized for training covers the same source pixels as its image. The
    image of a mask, resized by the one preprocessing path and cut at 0.5, must equal the
    target; nearest-neighbour targets (top-left sampling) sat (f-1)/2 source pixels off."""
    m = np.zeros((source, source), np.uint8)
    a, b = 5 * source // 512 + 5, source // 5 + 1
    m[a:b, a + 2 : b + 3] = 1
    want = preprocess_image(m * 255, 128, "dtype") >= 0.5  # the image path: 8-bit, /255, resized
    got = preprocess_mask(m, 128)
    assert got.dtype == np.uint8 and set(np.unique(got)) <= {0, 1}
    assert np.array_equal(got.astype(bool), want)
    # the centroid lands where the image's does (within a tenth of an output pixel)
    ys, xs = np.nonzero(got)
    scale = 128 / source
    assert ys.mean() == pytest.approx(((a + b - 1) / 2 + 0.5) * scale - 0.5, abs=0.1 + 0.5 * scale)
