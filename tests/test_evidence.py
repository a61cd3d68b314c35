"""The paired decision rule, fed measured rounds: no timing here."""

import math

import pytest

from autotune.evidence import (ALPHA, FASTER, MAX_ROUNDS, MIN_ROUNDS, SLOWER, UNDECIDED,
                               false_verdict_rate, paired_verdict, sign_test_p_values)

pytestmark = pytest.mark.parallel  # times nothing: runs beside other tests


def test_sign_test_is_exact():
    assert sign_test_p_values([-1] * 5) == (1 / 32, 1.0)
    at_most, at_least = sign_test_p_values([-1] * 7 + [5])
    assert math.isclose(at_most, 9 / 256) and math.isclose(at_least, 1 - 1 / 256)
    assert sign_test_p_values([0, 0]) == (1.0, 1.0)


def test_clearly_faster_in_median_despite_one_noisy_round_is_faster():
    # 9 rounds 10% faster, one round where a busy neighbour made it 12x slower
    verdict = paired_verdict([10.0] * 9 + [130.0], [11.0] * 10)
    assert verdict.outcome == FASTER and verdict.p_value < ALPHA and verdict.rounds == 10


def test_looking_after_every_round_keeps_the_stated_confidence():
    assert false_verdict_rate() < 0.05
    assert false_verdict_rate(alpha=0.05) > 0.05  # the naive per-look 5% would not
    assert paired_verdict([10.0] * MIN_ROUNDS, [11.0] * MIN_ROUNDS).outcome == FASTER
    assert paired_verdict([10.0] * (MIN_ROUNDS - 1), [11.0] * (MIN_ROUNDS - 1)).outcome == UNDECIDED
    assert MAX_ROUNDS >= 10  # room for one undetected noisy round among ten


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


def test_a_stored_latency_says_its_noise_and_its_evidence():
    from autotune.evidence import stored_evidence

    noise = {"iqr": 0.034, "median_iqr": 0.05, "rounds": 10, "quiet_rounds": 9, "noisy": False}
    faster = {"outcome": "faster", "ratio": 0.9, "p_value": 0.0107, "rounds": 9}
    assert stored_evidence({"noise": noise, "speedup_evidence": faster, "inconclusive": False}) == \
        "IQR 3%, 1 of 10 rounds busy, speedup at p=0.011 over 9 rounds"
    assert stored_evidence({"noise": {**noise, "noisy": True}, "speedup_evidence": None,
                            "inconclusive": True}) == \
        "IQR 3%, measured on a busy machine, inconclusive, the default kept"
    assert stored_evidence({"median_ms": 1.0}) == "noise not recorded"  # a record from before
