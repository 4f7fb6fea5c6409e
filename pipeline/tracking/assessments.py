"""MLflow assessments from a transcript: what makes a run an evaluation run in MLflow 3's own views.

Each answer's trace (pipeline.tracking.traces) gets:
- a Feedback per scorer: the answer's score, source CODE named after the scorer, the extracted
  answer the scorer saw as its rationale (the record's `extracted`, else the response), and the
  run id in its metadata (`mlflow.assessment.sourceRunId`: the UI's evaluation view of a run
  shows the traces whose assessments came from that run);
- with scoring=judge, the judge's Feedback: source LLM_JUDGE (the judge's model), its grade as the value
  and its reason as the rationale, or, where the judgement failed, no value and the error;
- an Expectation `expected_response` holding the sample's reference, its source the dataset.
An answer without a score gets no Feedback; one without a reference no Expectation.

MLflow has no bulk call for assessments, and one `create_assessment` on SQLite is one commit
(about 40 ms on a busy 2-core machine, nearly all of it the commit's fsync): 16 s for the demo
run's 200 samples, written one at a time. So:
- a SQL store (the local `sqlite:///` file) gets them in one transaction per CHUNK, as the rows
  MLflow's own `create_assessment` writes (the way traces.py writes spans with `log_spans`);
- any other store (a tracking server), or a SQL store whose internals this does not recognise,
  gets them through MLflow's public call from WORKERS threads at once, each call retried
  (RETRIES) while the store is busy or unreachable for a moment, and all of it given up after
  the first call that still fails.
Resumable: what the run's traces already hold is read first (one search per 500 traces) and
not written again; assessment ids are derived from the trace, name and value, so a call that
succeeded although its answer was lost is not repeated either, and a changed value (an answer
scored again) overrides the earlier one, which MLflow then marks invalid. Nothing here scores,
reads files or decides what a failure does to the run (pipeline.tracking.runs reports it).
"""

from __future__ import annotations

import hashlib
import random
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Optional

from pipeline.tracking.traces import group_answers, trace_id

EXPECTATION = "expected_response"  # the name MLflow's built-in judges read a reference under
SOURCE_RUN_ID = "mlflow.assessment.sourceRunId"  # mlflow.tracing.constant.AssessmentMetadataKey.SOURCE_RUN_ID
WORKERS = 8  # parallel calls to a server: enough to hide its round trips, few enough not to swamp it
RETRIES = 4  # tries of one call that met a busy or unreachable store
CHUNK = 500  # assessments per SQL transaction; traces per search page
MAX_RATIONALE = 2000  # characters of the extracted answer kept as the rationale


@dataclass(frozen=True)
class Written:
    written: int  # assessments written now
    kept: int  # found already written (a resumed run)


def answer_assessments(run_id: str, steps: list[dict[str, Any]], scorer: str, dataset: str) -> list[Any]:
    """The assessments of one answer's trace: the scorer's Feedback and the reference as an Expectation."""
    from mlflow.entities import AssessmentSource, AssessmentSourceType, Expectation, Feedback

    final = steps[-1]
    trace = trace_id(run_id, steps)
    found = []
    if final.get("score") is not None:
        # the score stage's `extracted` (null for an answer that could not be completed); older records: the response
        extracted = final.get("extracted") if final.get("extracted") is not None else final.get("response")
        feedback = Feedback(name=scorer, value=float(final["score"]), trace_id=trace,
                            source=AssessmentSource(AssessmentSourceType.CODE, scorer),
                            rationale=None if extracted is None else str(extracted)[:MAX_RATIONALE],
                            metadata={SOURCE_RUN_ID: run_id})
        found.append(feedback)
    if final.get("judge"):
        found.append(judge_feedback(run_id, trace, final["judge"]))
    if final.get("reference") is not None:
        found.append(Expectation(name=EXPECTATION, value=str(final["reference"]), trace_id=trace,
                                 source=AssessmentSource(AssessmentSourceType.HUMAN, dataset),
                                 metadata={SOURCE_RUN_ID: run_id}))
    for assessment in found:
        assessment.assessment_id = assessment_id(assessment)
    return found


def judge_feedback(run_id: str, trace: str, judged: dict[str, Any]) -> Any:
    """The judge's Feedback (scoring=judge): source LLM_JUDGE named after its model, its grade as the value and
    its reason as the rationale; a judgement that failed has no value and the error instead."""
    from mlflow.entities import AssessmentError, AssessmentSource, AssessmentSourceType, Feedback

    error = judged.get("error")
    return Feedback(name=judged.get("name") or "judge", trace_id=trace,
                    value=None if judged.get("grade") is None else float(judged["grade"]),
                    error=AssessmentError("JUDGE_FAILED", str(error)[:MAX_RATIONALE]) if error else None,
                    source=AssessmentSource(AssessmentSourceType.LLM_JUDGE, judged.get("model") or "judge"),
                    rationale=(judged.get("reason") or None) and str(judged["reason"])[:MAX_RATIONALE],
                    metadata={SOURCE_RUN_ID: run_id})


def assessment_id(assessment: Any) -> str:
    """a- and 32 hex digits from the trace, name and value: the same assessment always gets the same id."""
    value = assessment.feedback.value if assessment.feedback is not None else assessment.expectation.value
    digest = hashlib.sha256("\x1f".join(map(str, (assessment.trace_id, assessment.name, repr(value),
                                                   assessment.rationale))).encode()).hexdigest()
    return "a-" + digest[:32]


def log_assessments(tracking_uri: str, experiment_id: str, run_id: str, records: Iterable[dict[str, Any]],
                    scorer: str, dataset: str) -> Written:
    """Write the assessments of every answer's trace that it does not hold yet (see the module's docstring)."""
    from mlflow.tracing.client import TracingClient

    wanted = [a for steps in group_answers(records) for a in answer_assessments(run_id, steps, scorer, dataset)]
    client = TracingClient(tracking_uri)
    held = existing(tracking_uri, experiment_id, run_id)
    todo = []
    for assessment in wanted:
        earlier = held.get((assessment.trace_id, assessment.name))
        if earlier == assessment.assessment_id:
            continue
        assessment.overrides = earlier  # a changed value replaces the earlier one (None: the first)
        todo.append(assessment)
    if todo and not _insert_sql(client.store, todo):
        _write_each(client, todo)
    return Written(written=len(todo), kept=len(wanted) - len(todo))


def existing(tracking_uri: str, experiment_id: str, run_id: str) -> dict[tuple[str, str], str]:
    """(trace id, name) -> the id of the valid assessment the run's traces already hold."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    held: dict[tuple[str, str], str] = {}
    token = None
    while True:
        page = retried(lambda: client.search_traces(locations=[experiment_id], run_id=run_id, include_spans=False,
                                                    max_results=CHUNK, page_token=token))
        for trace in page:
            for assessment in trace.info.assessments or ():
                if assessment.valid is not False:
                    held[(trace.info.trace_id, assessment.name)] = assessment.assessment_id
        token = page.token
        if not token:
            return held


def _insert_sql(store: Any, assessments: list[Any]) -> bool:
    """Write to a SQL store in one transaction per CHUNK, as MLflow's create_assessment would row by row;
    False (nothing written) when the store is not one, or not as this expects."""
    try:
        from mlflow.store.tracking.dbmodels.models import SqlAssessments, SqlTraceInfo
        from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore
        from mlflow.store.tracking.utils.sql_trace_rollups import rollups_enabled
    except ImportError:
        return False
    if not isinstance(store, SqlAlchemyStore) or rollups_enabled():  # rollups: queues the public call keeps
        return False
    for first in range(0, len(assessments), CHUNK):
        chunk = assessments[first:first + CHUNK]
        retried(lambda: _insert_chunk(store, chunk, SqlAssessments, SqlTraceInfo))
    return True


def _insert_chunk(store: Any, chunk: list[Any], SqlAssessments: Any, SqlTraceInfo: Any) -> None:
    with store.ManagedSessionMaker(read_only=False) as session:  # a store with a read replica writes elsewhere
        traces = {row.request_id: row for row in session.query(SqlTraceInfo).filter(
            SqlTraceInfo.request_id.in_({a.trace_id for a in chunk}))}
        for assessment in chunk:
            trace = traces[assessment.trace_id]  # traces are written first: a missing one is an error
            if assessment.overrides:
                session.query(SqlAssessments).filter(
                    SqlAssessments.trace_id == assessment.trace_id,
                    SqlAssessments.assessment_id == assessment.overrides).update({"valid": False})
            row = SqlAssessments.from_mlflow_entity(assessment)
            row.experiment_id, row.trace_timestamp_ms = trace.experiment_id, trace.timestamp_ms
            session.add(row)


def _write_each(client: Any, assessments: list[Any]) -> None:
    """MLflow's public call, WORKERS at a time; the first call that still fails after its retries stops the rest."""
    def write(assessment: Any) -> None:
        retried(lambda: client.log_assessment(assessment.trace_id, assessment),
                written=lambda: _is_there(client, assessment))

    with ThreadPoolExecutor(max_workers=WORKERS, thread_name_prefix="assessments") as pool:
        futures = [pool.submit(write, assessment) for assessment in assessments]
        try:
            for future in futures:
                future.result()
        finally:
            for future in futures:
                future.cancel()


def _is_there(client: Any, assessment: Any) -> bool:
    """Whether the store holds this assessment (its id is derived: a retry after a lost answer finds it)."""
    try:
        client.get_assessment(assessment.trace_id, assessment.assessment_id)
        return True
    except Exception:  # noqa: BLE001 - not found, or not answerable now: either way not known to be there
        return False


def retried(call: Callable[[], Any], written: Optional[Callable[[], bool]] = None) -> Any:
    """Run a store call, again after a growing, jittered pause while the store is busy or unreachable.

    `written` says whether a call that failed on a duplicate id had in fact succeeded before."""
    for attempt in range(RETRIES):
        try:
            return call()
        except Exception as error:  # noqa: BLE001 - sorted below: a passing trouble is retried, anything else raised
            if written is not None and "constraint" in str(error) and written():
                return None
            if attempt + 1 == RETRIES or not is_transient(error):
                raise
            time.sleep(min(2.0, 0.1 * 2 ** attempt) * random.uniform(0.5, 1.5))
    raise AssertionError("unreachable")


def is_transient(error: BaseException) -> bool:
    """A busy SQLite file, a connection that failed, or a server that asked to be called later."""
    text = str(error)
    if "database is locked" in text or "database table is locked" in text:
        return True
    if isinstance(error, (ConnectionError, TimeoutError)):
        return True
    code = getattr(error, "error_code", "")
    return code in ("TEMPORARILY_UNAVAILABLE", "REQUEST_LIMIT_EXCEEDED") or "Max retries exceeded" in text
