"""The thumbnail gallery's HTML: rows per modality, captions escaped, thumbnails inline and decodable."""

import base64
import io
import re

import numpy as np
from PIL import Image

from ui.gallery import PNG_MAX_SIDE, gallery_html, image_data_url, missing_tile


def _decode(url: str) -> tuple[str, np.ndarray]:
    kind, payload = re.fullmatch(r"data:image/(png|jpeg);base64,(.+)", url).groups()
    return kind, np.asarray(Image.open(io.BytesIO(base64.b64decode(payload))).convert("RGB"))


def test_small_thumbnails_are_exact_png_and_large_ones_jpeg():
    rng = np.random.default_rng(0)
    small = rng.integers(0, 256, size=(16, 16, 3), dtype=np.uint8)
    kind, back = _decode(image_data_url(small))
    assert kind == "png" and np.array_equal(back, small)  # exact pixels: a 16 px chip is drawn pixelated
    big = np.full((PNG_MAX_SIDE * 2, PNG_MAX_SIDE * 2, 3), 90, dtype=np.uint8)
    kind, back = _decode(image_data_url(big))
    assert kind == "jpeg" and back.shape == big.shape and np.abs(back.astype(int) - 90).max() <= 3


def test_gallery_html_has_one_row_per_modality_in_order_with_escaped_captions():
    tiles = [missing_tile(16), np.zeros((16, 16, 3), np.uint8)]
    body = gallery_html([("Sentinel-2 RGB", tiles, ["query\nc-1", "#1 · 0.900\n<script>x</script>"]),
                         ("Sentinel-1 SAR", tiles, ["query\nc-1", "#1 · 0.900\nc-2"])], width=96)
    assert "<script>x" not in body and "&lt;script&gt;x&lt;/script&gt;" in body
    titles = re.findall(r'<div class="eo-row-title">(.*?)</div>', body)
    assert titles == ["Sentinel-2 RGB", "Sentinel-1 SAR"]
    assert body.count("<figure>") == 4 and body.count('class="eo-px"') == 4 and "--eo-w:96px" in body
    for url in re.findall(r'src="([^"]+)"', body):
        assert _decode(url)[1].shape == (16, 16, 3)
