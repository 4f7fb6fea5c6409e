"""Judges end to end: `python -m pipeline scoring=judge ...` as a user runs it.

One judged run for the module (the demo model sampled at temperature 1.5, so that some answers are
wrong, graded by exact_match and by the demo judge, tracked in MLflow). Against it: every answer's
grade, reason, tokens and time in the transcript, the judge's mean, interval and agreement in the
summary, who judged in config.json, plan.json and MLflow params, and each trace's LLM_JUDGE Feedback
beside exact_match's CODE Feedback. Then, from its transcript: re-judging in a new run loads no
generation model and gives the same grades at another batch size; a sweep over two judges, one of
which (the demo model itself) never writes a verdict, which gives no grade and an error, never a
guess; the judge behind `transformers serve` grades as it does in process. Apart: a judged run
interrupted by Ctrl-C while judging keeps its judgements and its resume judges only the rest, and a
judge that cannot work is one line and exit 2 before anything loads.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from pipeline.core.digest import weights_digest
from pipeline.core.config import ASSETS_DIR
from pipeline.core.transcript import read_transcript
from tests.conftest import mlflow_client, only_run_dir, run_main, run_pipeline, snapshot

pytestmark = pytest.mark.slow
JUDGE_MODEL = ASSETS_DIR / "judge_model"
LIMIT = 24
JUDGED = ["scoring=judge", f"dataset.limit={LIMIT}", "generation=sampling", "generation.temperature=1.5",
          "generation.seed=3"]


@pytest.fixture(scope="module")
def judged(tmp_path_factory):
    cwd = tmp_path_factory.mktemp("judged")
    result = run_pipeline(JUDGED, cwd=cwd)
    assert result.returncode == 0, result.stderr
    return cwd, only_run_dir(cwd), result


def answers(run_dir: Path) -> list[dict]:
    return [r for r in read_transcript(run_dir / "transcript.jsonl") if r.get("kind", "answer") == "answer"]


def grades(run_dir: Path) -> list:
    return [r["judge"]["grade"] for r in answers(run_dir)]


def test_a_judged_run_records_each_grade_its_reason_and_who_judged(judged):
    cwd, run_dir, result = judged
    records = answers(run_dir)
    assert len(records) == LIMIT
    for record in records:
        judge = record["judge"]
        assert judge["error"] is None and judge["grade"] in (0.0, 1.0), judge
        assert judge["said"] == ("correct" if judge["grade"] else "incorrect")
        assert judge["reason"] and judge["reason"] in judge["reply"]  # the judge's own words
        assert judge["prompt_tokens"] > 0 and judge["completion_tokens"] > 0 and judge["latency_s"] > 0
    summary = json.loads((run_dir / "summary.json").read_text())["judge"]
    graded = [r["judge"]["grade"] for r in records]
    assert summary["mean"] == pytest.approx(sum(graded) / LIMIT) and summary["graded"] == LIMIT
    assert summary["errors"] == 0 and summary["ci_low"] <= summary["mean"] <= summary["ci_high"]
    agreeing = sum(r["score"] == r["judge"]["grade"] for r in records)
    assert summary["agreement"] == pytest.approx(agreeing / LIMIT) and summary["agreement_n"] == LIMIT
    assert 0 < sum(graded) < LIMIT, "the sampled answers should be neither all right nor all wrong"
    assert summary["kappa"] is not None
    assert re.search(r"^judge +[0-9.]+ \[[0-9.]+, [0-9.]+\] 95% CI, 24 graded, 0 failed; agrees with exact_match on",
                     result.stdout, re.M), result.stdout

    # who judged: the model with its weights digest, the prompt's digest, the settings
    digest = weights_digest(sorted(JUDGE_MODEL.glob("*.safetensors")))
    assert json.loads((run_dir / "config.json").read_text())["scoring"]["judge"]["model"] == "judge-demo"
    plan = json.loads((run_dir / "plan.json").read_text())["judge"]
    assert plan["weights_digest"] == digest and plan["path"] == str(JUDGE_MODEL)
    assert plan["generation"]["do_sample"] is False and len(plan["prompt_digest"]) == 16
    assert any("fits the context" in check for check in plan["plan"]["checks"])
    # both models' memory, in process: the answering model's estimate and the judge's, never held together
    memory = next(check for check in plan["plan"]["checks"] if check.startswith("memory: "))
    assert "the answering model needs about" in memory and "never in memory together" in memory
    assert plan["plan"]["memory"]["total_bytes"] > 0
    (run,) = mlflow_client(cwd).search_runs(["1"])
    assert run.data.params["judge.weights_digest"] == digest
    assert run.data.params["judge.prompt_digest"] == plan["prompt_digest"]
    assert run.data.params["scoring.judge.model"] == "judge-demo"
    assert run.data.metrics["judge/mean"] == pytest.approx(summary["mean"])
    assert run.data.metrics["judge/kappa"] == pytest.approx(summary["kappa"])


def test_each_trace_carries_the_judges_llm_judge_feedback_beside_the_scorers(judged):
    cwd, run_dir, _ = judged
    client = mlflow_client(cwd)
    (run,) = client.search_runs(["1"])
    traces = client.search_traces(locations=["1"], run_id=run.info.run_id, max_results=100)
    by_sample = {r["sample_id"]: r for r in answers(run_dir)}
    assert len(traces) == LIMIT
    for trace in traces:
        feedback = {a.name: a for a in trace.info.assessments if a.feedback is not None}
        record = by_sample[trace.info.request_metadata.get("sample_id") or trace.info.tags["mlflow.traceName"]]
        judge, scorer = feedback["judge"], feedback["exact_match"]
        assert judge.source.source_type == "LLM_JUDGE" and judge.source.source_id == "judge-demo"
        assert judge.feedback.value == record["judge"]["grade"] and judge.rationale == record["judge"]["reason"]
        assert scorer.source.source_type == "CODE" and scorer.feedback.value == record["score"]


def test_rejudging_an_old_run_loads_no_generation_model_and_gives_the_same_grades_at_another_batch_size(judged):
    cwd, source, _ = judged
    before = snapshot(source)
    result = run_pipeline([f"pipeline.from_transcript={source}", "scoring=judge", "scoring.judge.batch_size=1",
                           "tracking=none"], cwd=cwd)
    assert result.returncode == 0, result.stderr
    assert not re.search(r"^(load|execute):", result.stderr, re.M)  # the stages that generate did not run
    assert f"judge: {LIMIT} answer(s) judged by judge (judge-demo); 0 kept from before" in result.stderr
    run_dir = Path(re.search(r"^run dir +(\S+)", result.stdout, re.M).group(1))
    run_dir = run_dir if run_dir.is_absolute() else cwd / run_dir
    assert grades(run_dir) == grades(source)  # greedy judging: the same grades at batch size 1 as at 16
    assert json.loads((run_dir / "plan.json").read_text())["judge"]["plan"]["batch_size"] == 1
    assert snapshot(source) == before


def test_two_judges_compared_and_a_judge_that_writes_no_verdict_gives_errors_never_grades(judged):
    cwd, source, _ = judged
    result = run_pipeline(["-m", f"pipeline.from_transcript={source}", "scoring=judge",
                           "scoring.judge.model=judge-demo,demo"], cwd=cwd)
    assert result.returncode == 0, result.stderr
    jobs = sorted((cwd / "runs" / "multirun").glob("*/*/[0-9]*"))
    assert len(jobs) == 2
    assert grades(jobs[0]) == grades(source)
    failed = answers(jobs[1])  # the demo model answers "Verdict:" with digits, not a grade word
    assert all(r["judge"]["grade"] is None and r["judge"]["error"].startswith("unreadable verdict") for r in failed)
    summary = json.loads((jobs[1] / "summary.json").read_text())["judge"]
    assert (summary["graded"], summary["errors"], summary["mean"], summary["agreement"]) == (0, LIMIT, None, None)
    client = mlflow_client(cwd)
    (child,) = client.search_runs(["1"], filter_string=f"tags.run_dir = '{jobs[1]}'")
    traces = client.search_traces(locations=["1"], run_id=child.info.run_id, max_results=100)
    errors = [a for t in traces for a in t.info.assessments if a.name == "judge"]
    assert len(errors) == LIMIT and all(a.feedback.value is None and a.feedback.error.error_code == "JUDGE_FAILED"
                                        for a in errors)


def test_the_judge_behind_transformers_serve_grades_as_it_does_in_process(judged, tmp_path):
    from tests.helpers.openai_server import serving, serving_extra_missing

    if serving_extra_missing() is not None:
        pytest.skip(str(serving_extra_missing()))
    cwd, source, _ = judged
    with serving(JUDGE_MODEL, tmp_path / "serve.log") as server:
        result = run_pipeline([f"pipeline.from_transcript={source}", "scoring=judge", "scoring.judge.backend=openai",
                               f"scoring.judge.model={server.model}", f"scoring.judge.base_url={server.base_url}",
                               "tracking=none"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    run_dir = only_run_dir(tmp_path)
    assert grades(run_dir) == grades(source)
    plan = json.loads((run_dir / "plan.json").read_text())["judge"]
    assert (plan["backend"], plan["model"], plan["endpoint"]) == ("openai", server.model, server.base_url)
    assert plan["weights_digest"] is None  # a served judge is named by its server and served id


def test_ctrl_c_while_judging_keeps_the_judgements_and_resume_judges_only_the_rest(tmp_path):
    from tests.run.test_kill import ForkRunner
    from tests.run.test_signals import run

    forker = ForkRunner()
    try:
        args = ["scoring=judge", "scoring.judge.batch_size=1", "dataset.limit=30", "tracking=none"]
        code, output = run(forker, tmp_path, args, "SIGINT", watch="runs/*/*/judgements.jsonl")
        assert code == 130, output
        run_dir = only_run_dir(tmp_path)
        assert json.loads((run_dir / "status.json").read_text())["state"] == "interrupted"
        kept = (run_dir / "judgements.jsonl").read_bytes()
        made = kept.count(b"\n")
        assert 1 <= made < 30, made
        code, output = run(forker, tmp_path, [f"resume={run_dir}"])
        assert code == 0, output
    finally:
        forker.close()
    assert not re.search(r"^(load|execute):", output, re.M)
    assert f"judge: {30 - made} answer(s) judged by judge (judge-demo); {made} kept from before" in output
    assert (run_dir / "judgements.jsonl").read_bytes().startswith(kept)  # what was judged stays as it was
    assert all(r["judge"]["grade"] in (0.0, 1.0) for r in answers(run_dir))


@pytest.mark.parametrize("setting, said", [
    ("scoring.judge.model=./no/such/judge", r"scoring.judge.model='./no/such/judge': path not found"),
    ("scoring.judge.max_new_tokens=250", r"^error: scoring.judge.model='judge-demo': sample 'add-\d+@0': prompt of "
                                         r"\d+ tokens \+ generation.max_new_tokens=250 exceeds the model's context of 256"),
    ("scoring.judge.prompt='{{ nonsense }}'", r"scoring.judge.prompt: 'nonsense' is undefined"),
    ("scoring.judge.base_url=http://127.0.0.1:9/v1", r"scoring.judge.base_url is a setting of backend=openai"
                                                     r", not backend=transformers: set scoring.judge.backend=openai"),
])
def test_a_judge_that_cannot_work_is_one_line_exit_2_before_anything_loads(setting, said, tmp_path, monkeypatch,
                                                                           capsys):
    monkeypatch.chdir(tmp_path)
    code, stderr = run_main(["scoring=judge", setting, "dataset.limit=3", "tracking=none"], monkeypatch, capsys)
    assert code == 2, stderr
    assert "Traceback" not in stderr and "load:" not in stderr
    assert re.search(said, stderr.strip().splitlines()[-1]), stderr
    assert not list(tmp_path.glob("runs/*/*/transcript.jsonl"))
