"""Sample grids (contract 5): pixel sizes, grey handling, quantisation."""

import numpy as np
import torch
from PIL import Image

from fastui.eval.grid import save_grid, side_by_side, to_uint8


def test_to_uint8_maps_minus_one_zero_one_to_0_128_255_and_clips():
    x = torch.tensor([-1.0, 0.0, 1.0, -3.0, 3.0]).view(1, 1, 1, 5)
    assert to_uint8(x).reshape(-1).tolist() == [0, 128, 255, 0, 255]


def test_save_grid_writes_png_with_expected_pixel_size(tmp_path):
    # 10 images of 32x32 with the default nrow ceil(sqrt(10)) = 4 -> 4 columns, 3 rows, 2-pixel separators.
    path = save_grid(torch.rand(10, 1, 32, 32) * 2 - 1, tmp_path / "g.png")
    with Image.open(path) as img:
        assert img.size == (4 * 34 + 2, 3 * 34 + 2)
        assert img.mode == "RGB"


def test_save_grid_respects_nrow_and_rgb(tmp_path):
    path = save_grid(torch.zeros(6, 3, 8, 16), tmp_path / "sub" / "g.png", nrow=6)
    with Image.open(path) as img:
        assert img.size == (6 * 18 + 2, 1 * 10 + 2)


def test_grey_images_are_shown_grey_and_tiles_hold_the_pixels(tmp_path):
    images = torch.rand(4, 1, 5, 5) * 2 - 1
    path = save_grid(images, tmp_path / "g.png", nrow=2)
    arr = np.asarray(Image.open(path))
    assert (arr[..., 0] == arr[..., 1]).all() and (arr[..., 1] == arr[..., 2]).all()
    # tile (row 1, col 0) starts at y = 2 + 7, x = 2
    np.testing.assert_array_equal(arr[9:14, 2:7, 0], to_uint8(images[2:3])[0, :, :, 0])


def test_side_by_side_places_labelled_panels_left_to_right(tmp_path):
    panels = {"teacher": torch.zeros(4, 1, 32, 32), "generator": torch.ones(9, 3, 32, 32)}
    path = side_by_side(panels, tmp_path / "s.png")
    with Image.open(path) as img:
        w_a, w_b = 2 * 34 + 2, 3 * 34 + 2
        h = max(2 * 34 + 2, 3 * 34 + 2)
        assert img.size == (w_a + 8 + w_b, 14 + h)
        arr = np.asarray(img)
    # the label strip holds dark text; panel 1 is mid-grey (0 -> 128), panel 2 white (1 -> 255)
    assert (arr[:14] < 100).any()
    assert arr[14 + 2 + 10, 2 + 10].tolist() == [128, 128, 128]
    assert arr[14 + 2 + 10, w_a + 8 + 2 + 10].tolist() == [255, 255, 255]
