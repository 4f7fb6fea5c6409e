"""Reading a judge's reply (pipeline.scoring.verdicts), the judge's prompt, its settings, and agreement.

Unit tests: every verdict style read, an unreadable reply is an error and never a grade, several
judgements fold into a majority without guessing, a judge's settings are refused with their
scoring.judge.* names, and Cohen's kappa is what the textbook says."""

from __future__ import annotations

import pytest

from pipeline.backends import registry
from pipeline.core.config import Config, JudgeConfig, ScoringConfig
from pipeline.core.errors import UserError
from pipeline.scoring.agreement import agreement
from pipeline.scoring.judge_prompts import judge_messages, prompt_digest
from pipeline.scoring.verdicts import Verdict, majority, read_verdict

GRADE = JudgeConfig(model="judge-demo")


@pytest.mark.parametrize("reply, grade, said, reason", [
    ("correct: 173 matches", 1.0, "correct", "173 matches"),
    ("incorrect: expected 173", 0.0, "incorrect", "expected 173"),
    ("**Incorrect** - the sum is 173", 0.0, "incorrect", "the sum is 173"),
    ("The answer is right.\nGRADE: correct", 1.0, "correct", "The answer is right."),
])
def test_a_grade_word_is_read_with_its_reason(reply, grade, said, reason):
    assert read_verdict(reply, GRADE) == Verdict(grade, said, reason)


@pytest.mark.parametrize("reply", ["173", "", "The answer is not correct", "maybe"])
def test_a_reply_without_a_grade_word_up_front_is_an_error_and_no_grade(reply):
    verdict = read_verdict(reply, GRADE)
    assert verdict.grade is None and verdict.error.startswith("unreadable verdict: no grade word (correct, incorrect)")


def test_a_number_on_the_scale_is_scaled_into_0_to_1_and_one_off_the_scale_is_refused():
    scale = JudgeConfig(model="m", verdict="scale", scale_min=1, scale_max=5)
    assert read_verdict("4 - nearly right", scale) == Verdict(0.75, "4", "nearly right")
    assert read_verdict("Reasoning first. Score: 5", scale).grade == 1.0
    assert read_verdict("7", scale).error == "unreadable verdict: 7 is off the scale 1 to 5 in '7'"
    assert read_verdict("no idea", scale).grade is None


def test_json_verdicts_take_a_grade_word_or_a_number_and_their_reason():
    config = JudgeConfig(model="m", verdict="json", scale_min=0, scale_max=10)
    assert read_verdict('Here: {"grade": "correct", "reason": "same number"}', config) == \
        Verdict(1.0, "correct", "same number")
    assert read_verdict('{"grade": 5, "reason": "half"}', config).grade == 0.5
    assert read_verdict('{"grade": "sort of"}', config).grade is None
    assert read_verdict('{"verdict": "correct"}', config).error.startswith("unreadable verdict: no JSON object")


def test_several_judgements_give_the_majority_a_tie_the_lower_and_a_failure_no_grade():
    right, wrong = Verdict(1.0, "correct", "a"), Verdict(0.0, "incorrect", "b")
    assert majority([right, wrong, right]).grade == 1.0
    assert majority([right, wrong]).grade == 0.0
    failed = majority([right, right, Verdict(None, None, "?", "unreadable verdict: x")])
    assert failed.grade is None and failed.error == "1 of 3 judgements failed; the first: unreadable verdict: x"


def test_the_prompt_shows_question_answer_reference_and_rubric_and_its_digest_follows_them():
    record = {"sample_id": "s1", "messages": [{"role": "user", "content": "What is 2+2?"}], "response": " 4",
              "reference": "4"}
    (message,) = judge_messages(GRADE, record)
    assert message.content == "Question: What is 2+2?\nReference: 4\nAnswer:  4\nVerdict:"
    rubric = JudgeConfig(model="m", rubric="Same number?", system_prompt="Be strict.")
    system, user = judge_messages(rubric, record)
    assert (system.role, system.content) == ("system", "Be strict.") and user.content.startswith("Same number?\n")
    assert len({prompt_digest(GRADE), prompt_digest(rubric), prompt_digest(JudgeConfig(prompt="{{ answer }}"))}) == 3


@pytest.mark.parametrize("settings, key", [
    (dict(verdict="stars"), "scoring.judge.verdict"),
    (dict(samples=3), "scoring.judge.samples"),  # greedy: every judgement the same
    (dict(temperature=-1.0), "scoring.judge.temperature"),
    (dict(device="tpu"), "scoring.judge.device"),
])
def test_a_judge_setting_out_of_range_is_refused_with_its_own_name(settings, key):
    with pytest.raises(Exception) as refused:
        JudgeConfig(model="m", **settings)
    assert str(refused.value).startswith(key), refused.value


@pytest.mark.parametrize("settings, said", [
    (dict(base_url="http://x/v1"), "scoring.judge.base_url is a setting of backend=openai, not backend=transformers: "
                                   "set scoring.judge.backend=openai"),  # a server's setting, in process
    (dict(backend="tgi"), "scoring.judge.backend='tgi' is not allowed: expected transformers, openai, vllm"),
])
def test_a_judges_backend_settings_are_checked_against_its_kind_by_name(settings, said):
    config = Config(scoring=ScoringConfig(judge=JudgeConfig(model="m", **settings)))
    with pytest.raises(UserError) as refused:
        registry.check(config)
    assert str(refused.value) == said


def test_agreement_and_cohens_kappa():
    # 10 answers: both pass 4, both fail 4, they differ on 2 -> p_o 0.8; pass rates 0.5 and 0.5 -> p_e 0.5
    a = [1, 1, 1, 1, 0, 0, 0, 0, 1, 0]
    b = [1, 1, 1, 1, 0, 0, 0, 0, 0, 1]
    found = agreement(a, b)
    assert (found.n, found.agreeing, found.share) == (10, 8, 0.8) and found.kappa == pytest.approx(0.6)
    assert agreement([1, 1], [1, 1]).kappa is None  # chance agrees on everything: nothing to measure
    assert agreement([], []).share is None
