"""Evaluation statistics: unbiased pass@k, unigram entropy, Welch's t-test and the exact McNemar
test (no scipy)."""
from __future__ import annotations

import collections
import math
from typing import Iterable, Sequence


def pass_at_k(n: int, c: int, k: int) -> float:
  """Unbiased pass@k (Chen et al., 2021): ``1 - C(n-c, k) / C(n, k)``, ``c`` of ``n`` correct."""
  if not 0 <= c <= n or not 1 <= k <= n:
    raise ValueError(f"need 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
  return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def unigram_entropy(ids: Iterable[int]) -> float:
  """Entropy (nats) of the empirical unigram distribution of one token sequence."""
  counts = collections.Counter(ids)
  total = sum(counts.values())
  if total == 0:
    raise ValueError("entropy of an empty sequence")
  return -sum(c / total * math.log(c / total) for c in counts.values())


def _beta_continued_fraction(a: float, b: float, x: float) -> float:
  """Continued fraction of the incomplete beta function (modified Lentz)."""
  tiny, eps = 1e-300, 1e-15
  c, d = 1.0, 1.0 - (a + b) * x / (a + 1.0)
  d = 1.0 / (d if abs(d) > tiny else tiny)
  h = d
  for m in range(1, 10_000):
    for numerator in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                      -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
      d = 1.0 + numerator * d
      d = 1.0 / (d if abs(d) > tiny else tiny)
      c = 1.0 + numerator / c
      c = c if abs(c) > tiny else tiny
      h *= d * c
    if abs(d * c - 1.0) < eps:
      return h
  raise ArithmeticError(f"incomplete beta did not converge for a={a}, b={b}, x={x}")


def regularized_incomplete_beta(a: float, b: float, x: float) -> float:
  """``I_x(a, b)`` for ``a, b > 0`` and ``0 <= x <= 1``."""
  if x <= 0.0 or x >= 1.0:
    return 0.0 if x <= 0.0 else 1.0
  log_front = (math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b)
               + a * math.log(x) + b * math.log1p(-x))
  if x < (a + 1.0) / (a + b + 2.0):
    return math.exp(log_front) * _beta_continued_fraction(a, b, x) / a
  return 1.0 - math.exp(log_front) * _beta_continued_fraction(b, a, 1.0 - x) / b


def welch_t_test(a: Sequence[float], b: Sequence[float]) -> tuple[float, float]:
  """Welch's two-sided t-test: ``(t, p_value)``, as ``scipy.stats.ttest_ind(equal_var=False)``.

  Zero variance in both samples gives ``t = ±inf, p = 0`` (different means) or ``nan, nan``.
  """
  if len(a) < 2 or len(b) < 2:
    raise ValueError("each sample needs at least two values")
  mean_a, mean_b = sum(a) / len(a), sum(b) / len(b)
  sd_a = math.sqrt(sum((x - mean_a) ** 2 for x in a) / (len(a) - 1))
  sd_b = math.sqrt(sum((x - mean_b) ** 2 for x in b) / (len(b) - 1))
  return welch_t_test_from_stats(mean_a, sd_a, len(a), mean_b, sd_b, len(b))


def welch_t_test_from_stats(mean_a: float, sd_a: float, n_a: int, mean_b: float, sd_b: float,
                            n_b: int) -> tuple[float, float]:
  """:func:`welch_t_test` from each sample's mean, standard deviation (``ddof=1``) and size,
  as ``scipy.stats.ttest_ind_from_stats(equal_var=False)``."""
  if n_a < 2 or n_b < 2:
    raise ValueError("each sample needs at least two values")
  var_a, var_b = sd_a**2 / n_a, sd_b**2 / n_b
  diff, se2 = mean_a - mean_b, var_a + var_b
  if se2 == 0.0:
    return (math.nan, math.nan) if diff == 0.0 else (math.copysign(math.inf, diff), 0.0)
  t = diff / math.sqrt(se2)
  df = se2**2 / (var_a**2 / (n_a - 1) + var_b**2 / (n_b - 1))
  return t, regularized_incomplete_beta(df / 2.0, 0.5, df / (df + t * t))


def mcnemar_exact(only_a: int, only_b: int) -> float:
  """Two-sided exact McNemar p-value of paired pass/fail outcomes.

  ``only_a``: pairs that passed under A only; ``only_b``: under B only (pairs that agree carry
  no information). Under the null of equal pass rates the discordant pairs split as
  Binomial(only_a + only_b, 1/2); the p-value is twice the smaller tail, capped at 1.
  """
  if only_a < 0 or only_b < 0:
    raise ValueError(f"counts must be non-negative, got {only_a}, {only_b}")
  n, k = only_a + only_b, min(only_a, only_b)
  return min(1.0, 2 * sum(math.comb(n, i) for i in range(k + 1)) / 2**n)
