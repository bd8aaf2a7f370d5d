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
