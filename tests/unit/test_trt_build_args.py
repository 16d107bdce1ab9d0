from __future__ import annotations

import pytest

from kiln.runtime.trt_build import ShapeProfile


def test_shape_profile_round_trips_through_the_command_line() -> None:
    profile = ShapeProfile("image", (1, 6, 320, 320), (8, 6, 320, 320), (16, 6, 320, 320))
    assert profile.to_arg() == "image=1x6x320x320:8x6x320x320:16x6x320x320"
    assert ShapeProfile.parse(profile.to_arg()) == profile
    scalar = ShapeProfile("sr", (), (), ())  # a rank-0 input, a sample rate
    assert ShapeProfile.parse(scalar.to_arg()) == scalar


def test_bad_profile_is_rejected() -> None:
    with pytest.raises(ValueError, match="expected NAME=MIN:OPT:MAX"):
        ShapeProfile.parse("image=1x3:2x3")
