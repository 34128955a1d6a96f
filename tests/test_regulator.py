"""The entropy regulator: Eqs. 9 and 11, its edge cases, and exact resume."""

import math

import pytest

from redrl.objectives import entropy_weight, relative_entropy_change
from redrl.regulator import EntropyRegulator


@pytest.mark.parametrize(
    ("d_sft", "d_rl", "expected"),
    [
        (0.2, 0.1, 2.0),  # ratio 2, inside [1, 8]
        (0.05, 0.1, 1.0),  # ratio 0.5 -> clipped up to 1
        (1.0, 0.01, 8.0),  # ratio 100 -> clipped down to G = 8
        (0.0, 0.0, 1.0),  # 0/0 -> 1
        (0.3, 0.0, 8.0),  # x/0 -> G
        (0.0, 0.3, 1.0),  # 0/x = 0 -> 1
    ],
)
def test_entropy_weight_table(d_sft, d_rl, expected):
    assert entropy_weight(d_sft, d_rl, 8) == expected


@pytest.mark.parametrize(("d_sft", "d_rl"), [(math.nan, 0.1), (0.1, math.inf), (math.inf, math.inf)])
def test_entropy_weight_non_finite_is_one_with_a_warning(d_sft, d_rl):
    with pytest.warns(RuntimeWarning, match="non-finite"):
        assert entropy_weight(d_sft, d_rl, 8) == 1.0


def test_entropy_weight_rejects_bad_arguments():
    with pytest.raises(ValueError, match="max_weight"):
        entropy_weight(0.1, 0.1, 0.5)
    with pytest.raises(ValueError, match="absolute"):
        entropy_weight(-0.1, 0.1, 8)


def test_relative_entropy_change():
    assert relative_entropy_change(0.9, 1.0) == pytest.approx(0.1)  # |1 - 0.9| = 0.1
    assert relative_entropy_change(1.5, 1.0) == pytest.approx(0.5)  # |1 - 1.5| = 0.5
    assert relative_entropy_change(0.0, 0.0) == 0.0
    assert relative_entropy_change(0.1, 0.0) == math.inf
    assert math.isnan(relative_entropy_change(math.nan, 1.0))


def test_regulator_hand_computed_sequence():
    reg = EntropyRegulator(max_weight=7)
    # Step 1: no history -> w = 1.
    assert reg.update(h_rl=1.0, h_sft=2.0) == 1.0
    # Step 2: ΔH_rl = |1 - 0.9/1.0| = 0.1, ΔH_sft = |1 - 2.6/2.0| = 0.3 -> w = 3.
    assert reg.update(0.9, 2.6) == pytest.approx(3.0)
    assert (reg.delta_h_rl, reg.delta_h_sft) == (pytest.approx(0.1), pytest.approx(0.3))
    # Step 3: ΔH_rl = |1 - 0.45/0.9| = 0.5, ΔH_sft = |1 - 2.6/2.6| = 0 -> ratio 0 -> w = 1.
    assert reg.update(0.45, 2.6) == 1.0
    # Step 4: ΔH_rl = 0 (0.45 again), ΔH_sft = |1 - 1.3/2.6| = 0.5 -> x/0 -> w = G = 7.
    assert reg.update(0.45, 1.3) == 7.0
    assert reg.steps == 4


def test_regulator_ema_smooths_before_the_change():
    reg = EntropyRegulator(max_weight=8, ema=0.5)
    reg.update(1.0, 1.0)  # S_rl = 1, S_sft = 1
    # S_rl = 0.5·1 + 0.5·0.8 = 0.9 -> ΔH_rl = 0.1;  S_sft = 0.5·1 + 0.5·1.4 = 1.2 -> ΔH_sft = 0.2.
    assert reg.update(0.8, 1.4) == pytest.approx(2.0)


def test_regulator_skips_non_finite_steps():
    reg = EntropyRegulator(max_weight=8)
    reg.update(1.0, 2.0)
    with pytest.warns(RuntimeWarning, match="non-finite"):
        assert reg.update(0.5, math.nan) == 1.0  # e.g. a step without offline rows
    # State untouched: the next step compares with (1.0, 2.0). ΔH_rl = 0.1, ΔH_sft = 0.25 -> 2.5.
    assert reg.update(0.9, 2.5) == pytest.approx(2.5)


def test_regulator_resumes_exactly():
    sequence = [(1.3, 2.1), (1.1, 2.4), (0.97, 2.2), (0.8, 2.9), (0.81, 2.0), (0.6, 2.05)]
    straight = EntropyRegulator(max_weight=7, ema=0.3)
    expected = [straight.update(*h) for h in sequence]

    first = EntropyRegulator(max_weight=7, ema=0.3)
    got = [first.update(*h) for h in sequence[:3]]
    resumed = EntropyRegulator(max_weight=7, ema=0.3)
    resumed.load_state_dict(first.state_dict())
    got += [resumed.update(*h) for h in sequence[3:]]
    assert got == expected  # exactly, not approximately
    assert resumed.state_dict() == straight.state_dict()


def test_regulator_refuses_state_from_other_settings():
    state = EntropyRegulator(max_weight=7).state_dict()
    with pytest.raises(ValueError, match="max_weight"):
        EntropyRegulator(max_weight=8).load_state_dict(state)


def test_regulator_validates_settings():
    with pytest.raises(ValueError):
        EntropyRegulator(max_weight=0.5)
    with pytest.raises(ValueError):
        EntropyRegulator(max_weight=8, ema=1.0)
