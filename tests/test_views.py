"""The pages' shared drawing helpers: token chips readable in both themes, whatever colour a page gives them."""

import re

import pytest

from playground.shared import PALETTE, prob_colour, text_colour, tokens_html, weight_colour


def contrast(a: str, b: str) -> float:
    """WCAG 2 contrast ratio of two '#rrggbb' colours, computed here independently of playground.shared."""
    def lum(c):
        v = [int(c[i:i + 2], 16) / 255 for i in (1, 3, 5)]
        v = [x / 12.92 if x <= 0.03928 else ((x + 0.055) / 1.055) ** 2.4 for x in v]
        return 0.2126 * v[0] + 0.7152 * v[1] + 0.0722 * v[2]
    hi, lo = sorted((lum(a), lum(b)), reverse=True)
    return (hi + 0.05) / (lo + 0.05)


def as_hex(colour: str) -> str:
    """hsl(...) or #rrggbb as #rrggbb, by the CSS Color 4 conversion (not colorsys, which the helper uses)."""
    if colour.startswith("#"):
        return colour
    h, s, l = (float(v) for v in re.findall(r"[\d.]+", colour))
    s, l = s / 100, l / 100
    a = s * min(l, 1 - l)
    f = lambda n: l - a * max(-1, min((n + h / 30) % 12 - 3, 9 - (n + h / 30) % 12, 1))  # noqa: E731
    return "#" + "".join(f"{round(255 * f(n)):02x}" for n in (0, 8, 4))


@pytest.mark.parametrize("colour", PALETTE + [prob_colour(i / 20) for i in range(21)]
                         + [weight_colour(i / 20) for i in range(21)] + ["#e5e7eb", "#000000", "#ffffff"])
def test_every_chip_colour_gets_a_text_colour_with_aa_contrast(colour):
    assert contrast(as_hex(colour), text_colour(colour)) >= 4.5


def test_chips_carry_their_text_colour_and_refuse_translucent_backgrounds():
    html = tokens_html([("a", "t", None), ("b", "t", weight_colour(1.0))])
    assert "color:#000000" in html and "color:#ffffff" in html
    with pytest.raises(ValueError, match="opaque"):
        text_colour("rgba(37, 99, 235, 0.5)")


def test_heat_png_maps_0_and_1_to_viridis_ends_and_nan_to_transparent():
    import base64
    import io

    import numpy as np
    from PIL import Image

    from playground.shared import VIRIDIS, heat_png
    z = np.array([[0.0, 1.0], [np.nan, 0.5]])
    uri = heat_png(z, min_pixels=4)
    img = np.array(Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))))
    assert img.shape == (4, 4, 4)                                      # each cell a 2 x 2 block
    hex_of = lambda px: "#" + "".join(f"{int(v):02x}" for v in px[:3])  # noqa: E731
    assert hex_of(img[0, 0]) == VIRIDIS[0] and hex_of(img[0, 3]) == VIRIDIS[-1]
    assert img[3, 0, 3] == 0 and img[0, 0, 3] == 255


def test_svg_views_escape_token_text():
    import numpy as np

    from playground.shared import heat_svg, line_svg
    svg = heat_svg(np.eye(2), ["<script>", "a&b"], "L0 <H1>")
    assert "<script>" not in svg and "&lt;script&gt;" in svg and "a&amp;b" in svg and "L0 &lt;H1&gt;" in svg
    assert "<script" not in line_svg([1, 2], [0.5, 0.2], "<b>x", "step", "nats")
