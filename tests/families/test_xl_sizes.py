"""XL output sizes: multiples of 32 or a named error, and the official autofit rule."""
from __future__ import annotations

import math

import pytest

from colorize.errors import InputError
from colorize.families.xl.sizes import autofit_size, check_xl_size


@pytest.mark.parametrize("hw", [(1024, 1024), (768, 1536), (32, 64)])
def test_multiples_of_32_are_accepted(hw: tuple[int, int]) -> None:
    check_xl_size(*hw)


@pytest.mark.parametrize("hw, message", [
    ((1000, 1024), r"height 1000; use e\.g\. width 1024, height 992"),
    ((1024, 1030), r"width 1030; use e\.g\. width 1024, height 1024"),
    ((None, 250), r"width 250; use e\.g\. width 256$"),
    ((0, 1024), "height 0"),
    ((1024, True), "width True"),
])
def test_other_sizes_are_one_line_errors(hw: tuple[int, int], message: str) -> None:
    with pytest.raises(InputError, match=message) as e:
        check_xl_size(*hw)
    assert "\n" not in str(e.value) and "multiples of 32" in str(e.value)


def _reference_autofit(h: int, w: int) -> tuple[int, int]:
    """The rule written out independently: aspect kept at 1024², (side + 16) floored to 32, clamped."""
    ratio = h / w
    new_w = math.sqrt(1024 * 1024 / ratio)
    new_h = new_w * ratio
    clamp = lambda v: min(1536, max(768, int((v + 16) // 32) * 32))  # noqa: E731
    return clamp(new_h), clamp(new_w)


@pytest.mark.parametrize("hw", [(1024, 1024), (600, 800), (2000, 1000), (3000, 500), (97, 131), (1080, 1920)])
def test_autofit_follows_the_official_rule(hw: tuple[int, int]) -> None:
    h, w = autofit_size(hw)
    assert (h, w) == _reference_autofit(*hw)
    assert h % 32 == 0 and w % 32 == 0 and 768 <= min(h, w) and max(h, w) <= 1536


def test_autofit_keeps_a_square_at_1024_and_refuses_an_empty_sketch() -> None:
    assert autofit_size((512, 512)) == (1024, 1024)
    with pytest.raises(InputError, match="no pixels"):
        autofit_size((0, 10))
