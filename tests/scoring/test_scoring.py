"""Scorers, their config checks, the intervals and pass@k, and the summary built from them (in-process, no model)."""

from __future__ import annotations

import itertools
import math
import re
import sys
import textwrap

import pytest

from pipeline.core.config import ScorerConfig
from pipeline.core.errors import ConfigError, UserError
from pipeline.core.records import Sample, Turn
from pipeline.scoring.intervals import (
    Z95,
    bootstrap_interval,
    k_values,
    mean_interval,
    paired_difference,
    pass_at_k,
    wilson_interval,
)
from pipeline.scoring.scorers import (
    build_scorer,
    check_scorer,
    last_number,
    parse_number,
    sample_references,
)
from pipeline.stages.summarize import summarize


def score(response, reference, **settings):
    return build_scorer(ScorerConfig(**settings))(response, reference)


# --- scorers ---------------------------------------------------------------------------------

def test_exact_match_and_its_normalisation_options():
    assert score(" 68\n", "68") == 1.0 and score("68.", "68") == 0.0 and score("68", None) is None
    assert score(" 68", "68", strip=False) == 0.0
    assert score("68.", "68", ignore_punctuation=True) == 1.0
    assert score("Paris", "paris") == 0.0 and score("Paris", "paris", ignore_case=True) == 1.0
    assert score("New   York", "New York") == 0.0 and score("New \n York", "New York", collapse_whitespace=True) == 1.0
    assert score("NEW york!", "new  York", ignore_case=True, ignore_punctuation=True, collapse_whitespace=True) == 1.0


def test_contains():
    assert score("The answer is 68.", "68", name="contains") == 1.0
    assert score("The answer is 67.", "68", name="contains") == 0.0
    assert score("THE ANSWER", "answer", name="contains", ignore_case=True) == 1.0


def test_regex_with_and_without_a_group():
    assert score("Answer: 68", "68", name="regex", pattern=r"Answer:\s*(\d+)") == 1.0
    assert score("Answer: 69", "68", name="regex", pattern=r"Answer:\s*(\d+)") == 0.0
    assert score("68", "68", name="regex", pattern=r"Answer:\s*(\d+)") == 0.0  # no match at all
    assert score("Answer: YES", "yes", name="regex", pattern=r"Answer: (\w+)", ignore_case=True) == 1.0
    assert score("so it is 68", "68", name="regex", pattern=r"^\d+$") == 0.0
    assert score("68", "anything", name="regex", pattern=r"^\d+$") == 1.0  # without a group the pattern decides


def test_numeric_takes_the_last_number_and_applies_tolerances():
    assert score("12 + 56 = 68", "68", name="numeric") == 1.0
    assert score("68.0", "68", name="numeric") == 1.0
    assert score("about 1,234 apples", "1234", name="numeric") == 1.0
    assert score("-5", "−5", name="numeric") == 1.0
    assert score("no number here", "68", name="numeric") == 0.0
    assert score("68.4", "68", name="numeric") == 0.0
    assert score("68.4", "68", name="numeric", abs_tol=0.5) == 1.0
    assert score("70", "68", name="numeric", rel_tol=0.05) == 1.0  # |70-68| = 2 <= 0.05 x 68 = 3.4
    assert score("72", "68", name="numeric", rel_tol=0.05) == 0.0
    assert score("x = 3, answer 68", "3", name="numeric", pattern=r"x = (\S+),") == 1.0
    assert last_number("1.5e3 then 2") == 2.0 and last_number("3.25.") == 3.25
    assert parse_number(" -1,234.5 ") == -1234.5 and parse_number("68 apples") is None and parse_number("") is None


@pytest.fixture
def user_scorers(tmp_path, monkeypatch):
    (tmp_path / "my_scorers.py").write_text(textwrap.dedent("""
        def close(response, reference, slack=0):
            return abs(int(response) - int(reference)) <= slack

        def half(response, reference):
            return None if reference is None else 0.5

        def broken(response, reference):
            return "yes"
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    yield
    sys.modules.pop("my_scorers", None)


def test_a_user_scorer_by_target_gets_its_options_and_its_result_is_checked(user_scorers):
    assert score("69", "68", _target_="my_scorers.close") == 0.0
    assert score("69", "68", _target_="my_scorers.close", options={"slack": 1}) == 1.0
    scorer = build_scorer(ScorerConfig(_target_="my_scorers.half"))
    assert scorer.label == "my_scorers.half" and scorer("x", "y") == 0.5 and scorer("x", None) is None
    with pytest.raises(UserError, match=r"my_scorers.broken returned 'yes'.*a number, a bool or None"):
        score("x", "y", _target_="my_scorers.broken")


def test_a_user_scorer_that_cannot_be_loaded_or_called_is_one_readable_line(user_scorers):
    for target, expected in [("nowhere.score", "cannot import nowhere"),
                             ("my_scorers.missing", "my_scorers has no attribute 'missing'"),
                             ("my_scorers.close", "cannot be called as close(response, reference, other=...)")]:
        options = {"other": 1} if target == "my_scorers.close" else {}
        with pytest.raises(UserError, match=re.escape(expected)) as raised:
            build_scorer(ScorerConfig(_target_=target, options=options))
        assert str(raised.value).startswith("dataset.scorer._target_=") and "\n" not in str(raised.value)


@pytest.mark.parametrize("settings, key", [
    ({"name": "fuzzy"}, "dataset.scorer.name"),
    ({"name": "regex"}, "dataset.scorer.pattern"),
    ({"name": "regex", "pattern": "(unclosed"}, "dataset.scorer.pattern"),
    ({"name": "exact_match", "pattern": "x"}, "dataset.scorer.pattern"),
    ({"name": "numeric", "abs_tol": -0.1}, "dataset.scorer.abs_tol"),
    ({"name": "numeric", "rel_tol": -1.0}, "dataset.scorer.rel_tol"),
    ({"options": {"a": 1}}, "dataset.scorer.options"),
    ({"_target_": "not a path"}, "dataset.scorer._target_"),
])
def test_bad_scorer_settings_are_refused_naming_the_key(settings, key):
    with pytest.raises(ConfigError) as raised:
        ScorerConfig(**settings)
    assert raised.value.key == key and "\n" not in str(raised.value)


def test_the_numeric_scorer_refuses_a_reference_that_is_not_a_number_naming_the_sample():
    samples = [Sample("a", (), reference="42"), Sample("talk", (), turns=(Turn("?", "7"), Turn("?", "seven")))]
    assert sample_references(samples) == [("a", "42"), ("talk", None), ("talk#0", "7"), ("talk#1", "seven")]
    assert check_scorer(ScorerConfig(name="exact_match"), sample_references(samples)).label == "exact_match"
    with pytest.raises(UserError, match=r"sample 'talk#1': reference 'seven' is not a number"):
        check_scorer(ScorerConfig(name="numeric"), sample_references(samples))


# --- intervals and pass@k --------------------------------------------------------------------

def test_wilson_interval_solves_its_defining_quadratic():
    # Wilson's bounds are the p where the observed p_hat is z standard errors from p:
    # (p_hat - p)^2 = z^2 p (1 - p) / n, i.e. (1 + z^2/n) p^2 - (2 p_hat + z^2/n) p + p_hat^2 = 0.
    for successes, n in [(7, 10), (0, 5), (5, 5), (196, 200), (1, 3)]:
        p_hat, z2 = successes / n, Z95 ** 2
        a, b, c = 1 + z2 / n, -(2 * p_hat + z2 / n), p_hat ** 2
        root = math.sqrt(b * b - 4 * a * c)
        low, high = wilson_interval(successes, n)
        assert low == pytest.approx((-b - root) / (2 * a), abs=1e-12)
        assert high == pytest.approx((-b + root) / (2 * a), abs=1e-12)
    assert wilson_interval(0, 5)[0] == 0.0 and wilson_interval(5, 5)[1] == 1.0


def test_the_bootstrap_interval_matches_the_exact_bootstrap_distribution():
    # With 4 values, the bootstrap distribution of the mean can be enumerated exactly (4^4 equally likely
    # resamples); the seeded Monte Carlo interval must land near its 2.5% and 97.5% quantiles.
    values = [0.0, 0.25, 0.5, 1.0]
    means = sorted(sum(pick) / 4 for pick in itertools.product(values, repeat=4))
    exact_low, exact_high = means[int(0.025 * len(means))], means[int(0.975 * len(means)) - 1]
    low, high = bootstrap_interval(values)
    assert low == pytest.approx(exact_low, abs=0.07) and high == pytest.approx(exact_high, abs=0.07)
    assert bootstrap_interval(values) == (low, high)  # seeded: the same on every call
    spread = [i / 37 for i in range(30)]
    assert bootstrap_interval(spread, seed=1) != bootstrap_interval(spread)


def test_mean_interval_uses_wilson_for_zero_one_scores_and_the_bootstrap_otherwise():
    assert mean_interval([1.0, 0.0, 1.0]) == (*wilson_interval(2, 3), "wilson")
    assert mean_interval([1.0, 0.5, 0.0]) == (*bootstrap_interval([1.0, 0.5, 0.0]), "bootstrap")
    assert mean_interval([]) == (None, None, "")


def test_paired_difference():
    assert paired_difference([1, 0, 1, 0], [1, 0, 1, 0]) == (0.0, 0.0, 0.0)
    difference, low, high = paired_difference([0] * 20, [1] * 15 + [0] * 5)
    assert difference == pytest.approx(0.75) and 0 < low < 0.75 < high <= 1


def test_pass_at_k_equals_counting_every_k_subset():
    # pass@k is the share of k-subsets of the n tries that hold at least one pass
    for n, c in [(5, 0), (5, 1), (5, 2), (6, 5), (4, 4)]:
        tries = [True] * c + [False] * (n - c)
        for k in range(1, n + 1):
            subsets = list(itertools.combinations(tries, k))
            assert pass_at_k(n, c, k) == pytest.approx(sum(any(s) for s in subsets) / len(subsets))
    assert pass_at_k(200, 13, 1) == pytest.approx(13 / 200)
    assert k_values(2) == [1, 2] and k_values(4) == [1, 2, 4] and k_values(10) == [1, 2, 5, 10]
    assert k_values(64) == [1, 2, 5, 10, 20, 50, 64]


# --- the summary -----------------------------------------------------------------------------

def record(sample_id, index, score, batch, prompt=10, completion=3, ttft=0.1, latency=0.3, **extra):
    return {"sample_id": sample_id, "sample_index": index, "score": score, "batch": batch, "prompt_tokens": prompt,
            "completion_tokens": completion, "ttft_s": ttft, "latency_s": latency, **extra}


def test_summary_interval_counts_each_sample_once_and_pass_at_k_uses_its_completions():
    # 3 samples x 2 completions: per-sample means 1.0, 0.5, 0.0 -> not 0/1, so the bootstrap over 3 samples
    records = [record("a", 0, 1.0, 0), record("a", 1, 1.0, 0), record("b", 0, 1.0, 0), record("b", 1, 0.0, 0),
               record("c", 0, 0.0, 1), record("c", 1, 0.0, 1)]
    summary = summarize(records, {"execute": 1.0}, "exact_match", (123, "process_peak_rss"))
    assert summary.accuracy == pytest.approx(0.5) and summary.correct == 3 and summary.scorer == "exact_match"
    assert (summary.accuracy_ci_low, summary.accuracy_ci_high) == bootstrap_interval([1.0, 0.5, 0.0])
    assert summary.accuracy_ci_method == "bootstrap" and summary.accuracy_ci_samples == 3
    assert summary.pass_at_k == {"1": pytest.approx(0.5), "2": pytest.approx((1 + 1 + 0) / 3)}
    metrics = summary.metrics()
    assert metrics["pass_at_2"] == pytest.approx(2 / 3) and metrics["peak_memory_bytes"] == 123
    assert metrics["accuracy_ci_low"] == summary.accuracy_ci_low
    # one completion each, all 0/1: Wilson over the samples, no pass@k
    single = summarize([r for r in records if r["sample_index"] == 0], {})
    assert (single.accuracy_ci_low, single.accuracy_ci_high) == wilson_interval(2, 3)
    assert single.accuracy_ci_method == "wilson" and single.pass_at_k == {} and "pass_at_1" not in single.metrics()


def test_prefill_and_decode_speed_count_each_shared_batch_once():
    records = [  # batch 0: two rows share a 0.2 s prefill, decoding ends with the slower row at 1.2 s
        record("a", 0, 1.0, 0, prompt=30, completion=5, ttft=0.2, latency=0.7),
        record("b", 0, 1.0, 0, prompt=20, completion=11, ttft=0.2, latency=1.2),
        # batch 1: one row; then a tool result (no model ran) and an error record, which count for neither
        record("c", 0, 0.0, 1, prompt=50, completion=1, ttft=0.3, latency=0.3),
        record("d", 0, None, 1, prompt=0, completion=0, ttft=0.0, latency=0.0, kind="tool_result", finish_reason="tool"),
        record("e", 0, 0.0, 2, prompt=0, completion=0, ttft=0.0, latency=0.0, status="error"),
    ]
    summary = summarize(records, {"execute": 2.0})
    assert summary.prefill_tokens_per_second == pytest.approx((30 + 20 + 50) / (0.2 + 0.3))
    # tokens after each row's first (which the prefill yields): 4 + 10 + 0, over (1.2 - 0.2) + (0.3 - 0.3) s
    assert summary.decode_tokens_per_second == pytest.approx(14 / 1.0)
    assert summary.ttft_p95_s == 0.3 and summary.ttft_p50_s == 0.2
    assert summary.num_errors == 1 and summary.num_samples == 4
