"""The kill test: SIGKILL the demo evaluation at 12 random moments, resume until done, and get
exactly the transcript of an uninterrupted run, in one MLflow run.

Each attempt is `python -m pipeline ...` (a fresh run while no run folder holds its command line
yet, then `resume=last` or `resume=<folder>`), forked by tests/fork_runner.py so that a kill costs
the run's own time and not Python's start-up. Kill moments are drawn (seeded; the seed is in the
failure message) as the earlier of a random time over an uninterrupted run's length (start-up,
planning, loading, execute, summarize) and a random point further on in the transcript (at most
a quarter of what is left, so that 12 kills never finish the run). Batches of one make execute
long enough to be cut in the middle. Every attempt must keep, byte for byte (timings included),
the whole records it found, and the attempt that finishes must generate only what was missing (its
run.log counts the records it wrote and the answers it kept): a resume that started over would
write the same greedy answers, but not the same bytes or counts.
"""

from __future__ import annotations

import json
import random
import re
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.core.transcript import read_transcript, scan
from tests.conftest import mlflow_client, pipeline_env, unscored

pytestmark = pytest.mark.slow
SEED = 20261122
KILLS = 12
ARGS = ["runtime.batch_size=1", "dataset.limit=80"]


class ForkRunner:
    def __init__(self) -> None:
        self.process = subprocess.Popen([sys.executable, str(Path(__file__).resolve().parents[1] / "helpers" / "fork_runner.py")],
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=pipeline_env())
        assert json.loads(self.process.stdout.readline())["ready"]

    def run(self, cwd: Path, argv: list[str], kill_after: float | None = None, kill_at_records: int | None = None) -> dict:
        request = {"cwd": str(cwd), "argv": argv, "log": str(cwd / "attempts.log"), "kill_after": kill_after}
        if kill_at_records is not None:
            request["kill_at_records"] = kill_at_records
        self.process.stdin.write(json.dumps(request) + "\n")
        self.process.stdin.flush()
        return json.loads(self.process.stdout.readline())

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait(timeout=60)


def run_folders(cwd: Path) -> list[Path]:
    return [p.parent.parent for p in (cwd / "runs").glob("*/*/.hydra/hydra.yaml")]


def whole_records(cwd: Path) -> bytes:
    """The bytes of the whole records in the one transcript under cwd (a torn last line left out), as execute
    wrote them (the score stage fills in their scores: conftest.unscored)."""
    transcripts = [f / "transcript.jsonl" for f in run_folders(cwd) if (f / "transcript.jsonl").exists()]
    assert len(transcripts) <= 1, f"a second run began: {transcripts}"
    if not transcripts:
        return b""
    _, size = scan(transcripts[0])
    return unscored(transcripts[0].read_bytes()[:size])


def test_a_run_killed_at_12_random_moments_resumes_to_the_uninterrupted_transcript(tmp_path):
    rng = random.Random(SEED)
    runner = ForkRunner()
    try:
        (tmp_path / "whole").mkdir()
        reference = runner.run(tmp_path / "whole", ARGS)
        assert reference["exit"] == 0, (tmp_path / "whole" / "attempts.log").read_text()[-3000:]
        (whole_dir,) = run_folders(tmp_path / "whole")
        whole = read_transcript(whole_dir / "transcript.jsonl")

        cwd = tmp_path / "killed"
        cwd.mkdir()
        kills, attempts, moments = 0, 0, []  # moments: (seconds, transcript lines)
        while kills < KILLS:
            attempts += 1
            assert attempts <= 3 * KILLS, f"seed {SEED}: only {kills} kills in {attempts} attempts"
            folders = run_folders(cwd)
            written = max((len(read_transcript(f / "transcript.jsonl")) for f in folders), default=0)
            moment = rng.uniform(0, reference["seconds"])
            at_record = written + 1 + int(rng.uniform(0, (len(whole) - written) / 4))
            argv = ARGS if not folders else (["resume=last"] if attempts % 2 else [f"resume={folders[0]}"])
            found = whole_records(cwd)
            outcome = runner.run(cwd, argv, kill_after=moment, kill_at_records=at_record)
            moments.append((round(moment, 3), at_record))
            assert whole_records(cwd).startswith(found), \
                f"seed {SEED}: attempt {attempts} changed records it found (kill moments {moments})"
            if outcome["killed"]:
                kills += 1
            else:
                assert outcome["exit"] == 0, f"seed {SEED}: attempt {attempts} exited {outcome['exit']}"
                assert "completed" not in (cwd / "attempts.log").read_text(), \
                    f"seed {SEED}: the run completed after {kills} kills, kill moments {moments}"
        for _ in range(5):  # resume until done
            (folder,) = [f for f in run_folders(cwd) if (f / "config.json").exists()]
            if json.loads((folder / "status.json").read_text())["state"] == "success":
                break
            found = whole_records(cwd)
            assert runner.run(cwd, [f"resume={folder}"])["exit"] == 0, (cwd / "attempts.log").read_text()[-3000:]
            assert whole_records(cwd).startswith(found), f"seed {SEED}: the last resume changed records it found"
    finally:
        runner.close()

    context = f"seed {SEED}, kill moments {moments}"
    resumed = read_transcript(folder / "transcript.jsonl")
    ids = [r["sample_id"] for r in resumed]
    assert len(ids) == len(set(ids)), f"duplicates; {context}"
    assert ids == [r["sample_id"] for r in whole], f"missing or out of order; {context}"
    assert [r["response"] for r in resumed] == [r["response"] for r in whole], context
    assert [r["batch"] for r in resumed] == [r["batch"] for r in whole], context
    # the attempt that finished generated only what was missing when it started (nothing, when every answer
    # was there: then it began at the score stage and did not execute at all)
    log_text = (folder / "run.log").read_text()
    counts = re.findall(r"execute: (\d+) records written in \d+ batches; (\d+) answer\(s\) kept from before", log_text)
    assert counts, f"no execute line in run.log; {context}"
    generated, kept = map(int, counts[-1])
    there = found.count(b"\n")
    if log_text.rfind("going on at the score stage") > log_text.rfind("execute: "):
        generated, kept = 0, there
        assert there == len(whole), f"began at the score stage with {there} of {len(whole)} records; {context}"
    assert kept == there and generated == len(whole) - kept, \
        f"generated {generated}, kept {kept}, {there} records were there; {context}"
    others = [f for f in run_folders(cwd) if f != folder]
    assert not any((f / "transcript.jsonl").exists() for f in others), f"a second run began; {context}"

    client = mlflow_client(cwd)
    (run,) = client.search_runs([client.get_experiment_by_name("pipeline").experiment_id])
    assert run.info.status == "FINISHED" and run.data.metrics["samples"] == len(whole), context
    assert run.data.tags["run_dir"] == str(folder)
    assert "transcript.jsonl" in {a.path for a in client.list_artifacts(run.info.run_id)}
