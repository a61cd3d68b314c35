"""Paired evidence from interleaved rounds: is one candidate faster than another, at what confidence?

Two candidates timed in the same rounds share each round's drift, so the per-round ratio of
their medians is the quantity to judge. The test is the exact sign test on those ratios,
one-sided each way. Not a rank test: noise on a shared machine comes as rare rounds 10-30x
slow, and a signed-rank test weighs such a round by its size (9 equal wins and one such loss in
10 rounds: p=0.046), where the sign test counts it as the one round it is (p=0.011).
A verdict is "faster" or "slower" only when that side's p-value is below ``ALPHA`` and the median
ratio clears ``MIN_GAIN``; otherwise "undecided", and more rounds may decide it.

The confirmation looks again after every round from ``MIN_ROUNDS`` to ``MAX_ROUNDS``; each look
is a chance to be fooled, so ``ALPHA`` is set per look such that the whole sequence reaches a
wrong verdict, when nothing differs, less than 5% of the time each way (``false_verdict_rate``).
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Mapping, Sequence

ALPHA = 0.032     # per look, one-sided: 4.8% over looks at rounds 5..12 (false_verdict_rate)
MIN_GAIN = 0.01   # and a difference under 1% in median is no difference worth a decision
MIN_ROUNDS = 5    # the fewest paired rounds that can decide: 5 of 5 gives p = 1/32
MAX_ROUNDS = 12
FASTER, SLOWER, UNDECIDED = "faster", "slower", "undecided"


@dataclass(frozen=True)
class Verdict:
    outcome: str        # FASTER, SLOWER or UNDECIDED: the candidate against the baseline
    ratio: float        # median over rounds of candidate / baseline (below 1: candidate faster)
    p_value: float      # of the outcome's side; of the likelier side when undecided
    rounds: int         # paired rounds it rests on

    @property
    def decided(self) -> bool:
        return self.outcome != UNDECIDED

    def describe(self) -> str:
        sure = f"p={self.p_value:.3f}, {self.rounds} paired rounds"
        if self.outcome == FASTER:
            return f"{1 / self.ratio:.2f}x faster ({sure})"
        if self.outcome == SLOWER:
            return f"{self.ratio:.2f}x slower ({sure})"
        if not self.rounds:
            return "undecided: no paired rounds"
        return f"undecided: ratio {self.ratio:.3f} ({sure})"

    def to_dict(self) -> dict:
        ratio = None if math.isnan(self.ratio) else self.ratio  # JSON has no NaN
        return {"outcome": self.outcome, "ratio": ratio, "p_value": self.p_value,
                "rounds": self.rounds, "alpha": ALPHA, "min_gain": MIN_GAIN}


def sign_test_p_values(differences: Sequence[float]) -> tuple[float, float]:
    """Exact one-sided p-values of the sign test: (P of this few positive differences or fewer,
    P of this many or more) when each sign is a fair coin. Zero differences are dropped."""
    signs = [d > 0 for d in differences if d != 0]
    n, positive = len(signs), sum(signs)
    if not n:
        return 1.0, 1.0
    at_most = sum(math.comb(n, k) for k in range(positive + 1)) / 2 ** n
    at_least = sum(math.comb(n, k) for k in range(positive, n + 1)) / 2 ** n
    return at_most, at_least


def paired_verdict(candidate_ms: Sequence[float], baseline_ms: Sequence[float], *,
                   alpha: float = ALPHA, min_gain: float = MIN_GAIN) -> Verdict:
    """The candidate against the baseline from their medians in the same rounds (one pair per
    round both completed)."""
    pairs = [(c, b) for c, b in zip(candidate_ms, baseline_ms) if c and b]
    if not pairs:
        return Verdict(UNDECIDED, math.nan, 1.0, 0)
    logs = [math.log(c / b) for c, b in pairs]
    ratio = math.exp(statistics.median(logs))
    p_faster, p_slower = sign_test_p_values(logs)
    if p_faster < alpha and ratio <= 1 - min_gain:
        return Verdict(FASTER, ratio, p_faster, len(pairs))
    if p_slower < alpha and ratio >= 1 + min_gain:
        return Verdict(SLOWER, ratio, p_slower, len(pairs))
    return Verdict(UNDECIDED, ratio, min(p_faster, p_slower), len(pairs))


def false_verdict_rate(alpha: float = ALPHA, first: int = MIN_ROUNDS, last: int = MAX_ROUNDS) -> float:
    """The chance that looking after every round from ``first`` to ``last`` ever says "faster"
    when each round's sign is a fair coin (by symmetry, the same for "slower")."""
    alive = {0: 1.0}  # positive signs so far -> probability of getting here undecided
    wrong = 0.0
    for n in range(1, last + 1):
        step: dict[int, float] = {}
        for positives, p in alive.items():
            for more in (0, 1):
                step[positives + more] = step.get(positives + more, 0.0) + p / 2
        alive = {}
        for positives, p in step.items():
            if n >= first and sign_test_p_values([1.0] * positives + [-1.0] * (n - positives))[0] < alpha:
                wrong += p
            else:
                alive[positives] = p
    return wrong


def stored_evidence(latency: Mapping) -> str:
    """A stored record's noise and the confidence of its speedup, in a few words."""
    noise = latency.get("noise")
    if not noise:
        return "noise not recorded"
    parts = [f"IQR {100 * noise['iqr']:.0f}%"]
    if noise.get("noisy"):
        parts.append("measured on a busy machine")
    elif noise["quiet_rounds"] < noise["rounds"]:
        parts.append(f"{noise['rounds'] - noise['quiet_rounds']} of {noise['rounds']} rounds busy")
    verdict = latency.get("speedup_evidence")
    if latency.get("inconclusive"):
        kept = "the default kept" if latency.get("kept_default", True) else "the fastest config kept"
        parts.append(f"inconclusive, {kept}")
    elif verdict and verdict["outcome"] == FASTER:
        parts.append(f"speedup at p={verdict['p_value']:.3f} over {verdict['rounds']} rounds")
    else:
        parts.append("no speedup claimed")
    return ", ".join(parts)
