"""Interval estimates and pass@k: how sure a mean score is, and how often k tries would pass.

- `mean_interval`: a 95% interval for a mean score; Wilson's score interval when every score is 0
  or 1 (well behaved at small n and near 0 or 1, unlike mean +- 1.96 SE), otherwise a seeded
  percentile bootstrap.
- `paired_difference`: the mean difference of two runs over the same samples, with a seeded
  bootstrap interval over the pairs (pairing removes the samples' own difficulty from the noise).
- `pass_at_k`: the unbiased estimator of Chen et al. 2021 (Evaluating Large Language Models
  Trained on Code), 1 - C(n-c, k) / C(n, k), for n tries of which c passed.

Plain numbers in, plain numbers out; nothing here knows about runs or transcripts.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

Z95 = 1.959963984540054  # the standard normal's 97.5% quantile
BOOTSTRAP_RESAMPLES = 10_000
BOOTSTRAP_SEED = 0  # fixed: the same scores give the same interval on every machine


def wilson_interval(successes: float, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson's score interval for a proportion successes/n (n >= 1)."""
    p = successes / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z / denominator * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


def bootstrap_interval(values: Sequence[float], seed: int = BOOTSTRAP_SEED,
                       resamples: int = BOOTSTRAP_RESAMPLES, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of `values`: resample with replacement, seeded."""
    import numpy as np

    data = np.asarray(values, dtype=float)
    rng = np.random.default_rng(seed)
    means = np.empty(resamples)
    chunk = max(1, 2_000_000 // len(data))  # bounded memory for long datasets
    for start in range(0, resamples, chunk):
        stop = min(start + chunk, resamples)
        means[start:stop] = data[rng.integers(0, len(data), size=(stop - start, len(data)))].mean(axis=1)
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return float(low), float(high)


def is_binary(values: Sequence[float]) -> bool:
    return all(value in (0.0, 1.0) for value in values)


def mean_interval(values: Sequence[float]) -> tuple[Optional[float], Optional[float], str]:
    """(low, high, method) of a 95% interval for the mean; (None, None, "") for no values."""
    if not values:
        return None, None, ""
    if is_binary(values):
        return (*wilson_interval(sum(values), len(values)), "wilson")
    return (*bootstrap_interval(values), "bootstrap")


def paired_difference(a: Sequence[float], b: Sequence[float]) -> tuple[float, float, float]:
    """(mean of b - a, low, high): the difference of two runs' scores on the same samples, in the same order."""
    differences = [y - x for x, y in zip(a, b, strict=True)]
    low, high = bootstrap_interval(differences)
    return sum(differences) / len(differences), low, high


def pass_at_k(n: int, c: int, k: int) -> float:
    """The chance that at least one of k tries drawn from n (c of them passing) passes, unbiased."""
    if k > n:
        raise ValueError(f"k={k} > n={n}")
    if n - c < k:
        return 1.0
    # 1 - C(n-c, k)/C(n, k) as a product, which stays exact-ish for large n
    return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))


def k_values(n: int) -> list[int]:
    """The k worth reporting for n tries each: 1, 2, 5, 10, 20, 50, ... up to n, and n itself."""
    ks, step = [], 0
    while True:
        k = (1, 2, 5)[step % 3] * 10 ** (step // 3)
        if k >= n:
            break
        ks.append(k)
        step += 1
    return ks + [n]
