"""The paired decision rule, fed measured rounds: no timing here."""

import math

from autotune.evidence import FASTER, SLOWER, UNDECIDED, paired_verdict, sign_test_p_values


def test_sign_test_is_exact():
    assert sign_test_p_values([-1] * 5) == (1 / 32, 1.0)
    at_most, at_least = sign_test_p_values([-1] * 7 + [5])
    assert math.isclose(at_most, 9 / 256) and math.isclose(at_least, 1 - 1 / 256)
    assert sign_test_p_values([0, 0]) == (1.0, 1.0)


def test_clearly_faster_in_median_despite_one_noisy_round_is_faster():
    # 7 rounds 10% faster, one round where a busy neighbour made it 12x slower
    verdict = paired_verdict([10.0] * 7 + [130.0], [11.0] * 8)
    assert verdict.outcome == FASTER and verdict.p_value < 0.05 and verdict.rounds == 8


def test_too_few_rounds_or_a_split_is_undecided():
    assert paired_verdict([10.0] * 4, [11.0] * 4).outcome == UNDECIDED  # p = 1/16
    assert paired_verdict([10, 12, 10, 12, 10, 12], [11] * 6).outcome == UNDECIDED


def test_a_consistent_gain_below_the_minimum_is_no_decision():
    assert paired_verdict([10.05] * 9, [10.0] * 9).outcome == UNDECIDED


def test_slower_is_decided_too():
    verdict = paired_verdict([12.0] * 6, [10.0] * 6)
    assert verdict.outcome == SLOWER and math.isclose(verdict.ratio, 1.2)


def test_rounds_where_either_failed_are_not_paired():
    assert paired_verdict([10.0, None, 10.0], [11.0, 11.0, None]).rounds == 1
