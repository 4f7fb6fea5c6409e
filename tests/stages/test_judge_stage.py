"""The judge stage over a run folder, in this process, with the demo judge (pipeline.stages.judge).

A sampled judge with a seed gives the same votes at any batch size; the journal keeps each
answer's verdict and is trusted only for the same judge and the same prompt (a changed answer or
another judge is judged again); an answer that could not be completed is not shown to the judge."""

from __future__ import annotations

import json

from pipeline.core.config import ASSETS_DIR, Config, JudgeConfig, ScoringConfig
from pipeline.core.transcript import read_transcript
from pipeline.stages.judge import judge, plan_judge
from tests.conftest import write_jsonl


def answer(a: int, b: int, response: str, reference: str | None, **more) -> dict:
    return {"sample_id": f"{a}+{b}", "sample_index": 0, "kind": "answer", "status": "ok", "response": response,
            "reference": reference, "score": None, "messages": [{"role": "user", "content": f"What is {a}+{b}?"}],
            **more}


# sums of the demo task; every third answer is one off
RECORDS = [answer(31 + 5 * i, 44 + 3 * i, str(75 + 8 * i + (i % 3 == 0)), str(75 + 8 * i)) for i in range(9)]


def judged(tmp_path, name: str, records: list[dict], **settings) -> tuple[list[dict], int]:
    run_dir = tmp_path / name
    run_dir.mkdir(exist_ok=True)
    if not (run_dir / "transcript.jsonl").exists():
        write_jsonl(run_dir / "transcript.jsonl", records)
    config = Config(scoring=ScoringConfig(judge=JudgeConfig(model="judge-demo", device="cpu", **settings)))
    config.runtime.aliases["judge-demo"] = str(ASSETS_DIR / "judge_model")  # conf/config.yaml's alias
    made = judge(run_dir, plan_judge(config, records, run_dir))
    return [r["judge"] for r in read_transcript(run_dir / "transcript.jsonl")], made


def test_a_sampled_judge_with_a_seed_gives_the_same_votes_at_any_batch_size(tmp_path):
    sampled = dict(temperature=1.5, samples=3, seed=7)
    one, _ = judged(tmp_path, "one", RECORDS, batch_size=1, **sampled)
    seven, _ = judged(tmp_path, "seven", RECORDS, batch_size=7, **sampled)
    assert [j["votes"] for j in one] == [j["votes"] for j in seven]
    assert all(len(j["votes"]) == 3 for j in one)
    other, _ = judged(tmp_path, "other", RECORDS, batch_size=7, temperature=1.5, samples=3, seed=8)
    assert [j["votes"] for j in other] != [j["votes"] for j in one]  # the seed decides the draws


def test_the_journal_counts_only_for_the_same_judge_and_the_same_prompt(tmp_path):
    first, made = judged(tmp_path, "run", RECORDS)
    assert made == 9 and all(j["grade"] in (0.0, 1.0) and j["error"] is None for j in first)
    journal = tmp_path / "run" / "judgements.jsonl"
    assert len(read_transcript(journal)) == 9
    _, made = judged(tmp_path, "run", RECORDS)
    assert made == 0  # all kept
    _, made = judged(tmp_path, "run", RECORDS, rubric="Same number?")  # another prompt: another judge
    assert made == 9
    # an answer changed since it was judged is judged again; the rest are kept
    changed = RECORDS[:1] + [dict(RECORDS[1], response="999")] + RECORDS[2:]
    (tmp_path / "run" / "transcript.jsonl").unlink()
    again, made = judged(tmp_path, "run", changed)
    assert made == 1 and again[1]["grade"] == 0.0 and again[1]["reason"] == "expected 83"
    assert again[2:] == first[2:]


def test_an_answer_that_could_not_be_completed_is_not_shown_to_the_judge(tmp_path):
    records = [answer(1, 1, "", "2", status="error", error="timed out"), answer(2, 2, "", None, status="error", error="x")]
    verdicts, made = judged(tmp_path, "run", records)
    assert made == 2
    assert [(v["grade"], v["error"], v["prompt_tokens"]) for v in verdicts] == [(0.0, None, 0), (None, None, 0)]
    assert verdicts[0]["reason"] == "no answer to judge: timed out"
    assert json.loads((tmp_path / "run" / "judgements.jsonl").read_text().splitlines()[0])["grade"] == 0.0
