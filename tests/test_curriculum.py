"""The entropy-gated length curriculum: grows while entropy holds, freezes for good when it drops."""

import math

import pytest

from redrl.curriculum import LengthCurriculum


def test_the_window_grows_every_k_steps_while_entropy_holds_and_freezes_when_it_drops():
    curriculum = LengthCurriculum(16, 100, growth=2.0, every=2, threshold=0.5)
    windows = []
    for entropy in [0.9, 0.8, 0.9, 0.7, 0.6, 0.9, 0.4, 0.9, 0.9, 0.9]:
        windows.append(curriculum.window)
        curriculum.update(entropy)
    # grows after steps 2 and 4 (16 -> 32 -> 64), then 6 (-> 100, the limit); step 7's 0.4 freezes it
    assert windows == [16, 16, 32, 32, 64, 64, 100, 100, 100, 100]
    assert curriculum.frozen and curriculum.window == 100


def test_a_drop_before_the_first_growth_keeps_the_start_window():
    curriculum = LengthCurriculum(8, 64, every=3, threshold=0.5)
    for entropy in [0.9, 0.1, 0.9, 0.9, 0.9, 0.9]:
        curriculum.update(entropy)
    assert curriculum.window == 8 and curriculum.frozen


def test_state_round_trips_and_bad_settings_are_refused():
    curriculum = LengthCurriculum(8, 64, every=1)
    curriculum.update(1.0)
    curriculum.update(math.nan)  # no entropy measured this step: nothing changes but the count
    copy = LengthCurriculum(8, 64, every=1)
    copy.load_state_dict(curriculum.state_dict())
    assert copy.state_dict() == curriculum.state_dict() == {"window": 16, "frozen": False, "steps": 2}
    with pytest.raises(ValueError, match="start window must be in"):
        LengthCurriculum(100, 64)
    with pytest.raises(ValueError, match="must grow"):
        LengthCurriculum(8, 64, growth=1.0)
