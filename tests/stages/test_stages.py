"""Load, execute and summarize on their own, on a tiny random model (resolve and plan: their own files)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from pipeline.backends.transformers.generate import _completion
from pipeline.backends.transformers.load import load, load_tokenizer
from tests.helpers.planning import plan_in_process
from pipeline.core.config import GenerationConfig, RuntimeConfig, SessionConfig
from pipeline.core.errors import LoadError, UserError
from pipeline.core.transcript import TranscriptWriter, read_transcript
from pipeline.stages.execute import execute
from pipeline.stages.resolve import resolve
from pipeline.stages.summarize import percentile, summarize
from tests.conftest import in_process, make_config, write_jsonl
from tests.helpers.tiny_model import overlap_two_tensors


def planned(model: Path, dataset: Path, **sections):
    config = make_config(model, dataset, **sections)
    result, samples, template = plan_in_process(config)
    return config, samples, template, result


# --- load + execute --------------------------------------------------------------------------

def run_execute(tmp_path, tiny_model, dataset, expected: int | None = None, sink=None, **sections) -> list[dict]:
    config, samples, template, result = planned(tiny_model, dataset, **sections)
    runtime = load(result, template)
    path = tmp_path / f"transcript-{len(list(tmp_path.glob('transcript-*')))}.jsonl"
    with TranscriptWriter(path) as writer:
        written = execute(in_process(runtime, config), samples, config, writer, config.config_hash(), sink)
        assert written == (expected or len(samples))
    return read_transcript(path)


def test_execute_writes_one_complete_record_per_sample_in_order(tmp_path, tiny_model, small_dataset):
    records = run_execute(tmp_path, tiny_model, small_dataset)
    assert [r["sample_id"] for r in records] == [f"s{i}" for i in range(5)]
    assert [r["batch"] for r in records] == [0, 0, 1, 1, 2]
    for record in records:
        assert record["schema_version"] == 1 and record["status"] == "ok"
        assert record["messages"][-1]["role"] == "user" and record["reference"] is not None
        assert record["score"] is None and record["extracted"] is None  # answers only: the score stage scores them
        assert record["prompt_tokens"] > 10 and 1 <= record["completion_tokens"] <= 8
        assert record["finish_reason"] in ("stop", "length") and record["latency_s"] > 0
        assert len(record["config_hash"]) == 16


def test_greedy_is_deterministic_and_sampling_is_seeded(tmp_path, tiny_model, small_dataset):
    greedy = [r["response"] for r in run_execute(tmp_path, tiny_model, small_dataset)]
    assert greedy == [r["response"] for r in run_execute(tmp_path, tiny_model, small_dataset)]
    hot = GenerationConfig(temperature=2.0, seed=7)
    sampled = [r["response"] for r in run_execute(tmp_path, tiny_model, small_dataset, generation=hot)]
    again = [r["response"] for r in run_execute(tmp_path, tiny_model, small_dataset, generation=hot)]
    other = [r["response"] for r in run_execute(tmp_path, tiny_model, small_dataset,
                                                generation=GenerationConfig(temperature=2.0, seed=8))]
    assert sampled == again
    assert sampled != other and sampled != greedy


def test_a_sampled_output_does_not_depend_on_batch_size_or_order(tmp_path, tiny_model, small_dataset):
    hot = GenerationConfig(temperature=1.5, seed=3)

    def responses(batch_size: int, dataset) -> dict:
        config, samples, template, result = planned(tiny_model, dataset, generation=hot)
        result.batch_size = batch_size
        runtime = load(result, template)
        path = tmp_path / f"t-{batch_size}-{dataset.name}.jsonl"
        with TranscriptWriter(path) as writer:
            execute(in_process(runtime, config), samples, config, writer, config.config_hash())
        return {r["sample_id"]: r["response"] for r in read_transcript(path)}

    reversed_dataset = write_jsonl(tmp_path / "reversed.jsonl", list(reversed(
        [json.loads(line) for line in small_dataset.read_text().splitlines()])))
    one = responses(1, small_dataset)
    assert responses(5, small_dataset) == one
    assert responses(2, reversed_dataset) == one
    assert len(set(one.values())) > 1  # really sampled


def test_num_samples_gives_k_seeded_completions_per_prompt(tmp_path, tiny_model, small_dataset):
    records = run_execute(tmp_path, tiny_model, small_dataset, expected=15,
                          generation=GenerationConfig(temperature=2.0, seed=1, num_samples=3))
    by_sample: dict[str, list] = {}
    for record in records:
        by_sample.setdefault(record["sample_id"], []).append(record)
    assert all(sorted(r["sample_index"] for r in group) == [0, 1, 2] for group in by_sample.values())
    assert any(len({r["response"] for r in group}) > 1 for group in by_sample.values())


def test_batches_are_formed_by_prompt_length_and_times_are_per_sample(tmp_path, tiny_model):
    lengths = [5, 60, 6, 58, 30, 31]
    dataset = write_jsonl(tmp_path / "mixed.jsonl", [{"id": f"m{i}", "prompt": "q" * n} for i, n in enumerate(lengths)])
    records = run_execute(tmp_path, tiny_model, dataset)
    assert [r["sample_id"] for r in records] == ["m1", "m3", "m5", "m4", "m2", "m0"]  # longest first, pairs
    assert [r["batch"] for r in records] == [0, 0, 1, 1, 2, 2]
    for record in records:
        assert 0 < record["ttft_s"] <= record["latency_s"]


def test_prefill_is_continued_and_kept_in_the_response(tmp_path, tiny_model, small_dataset):
    plain = run_execute(tmp_path, tiny_model, small_dataset)
    seeded = run_execute(tmp_path, tiny_model, small_dataset, session=SessionConfig(prefill="The answer is"))
    assert all(r["response"].startswith("The answer is") for r in seeded)
    assert seeded[0]["prompt_tokens"] == plain[0]["prompt_tokens"] + len("The answer is")


def test_a_stream_sink_sees_the_text_as_it_is_generated(tmp_path, tiny_model, small_dataset):
    class Collect:
        def __init__(self):
            self.pieces, self.complete = {}, {}

        def on_text(self, row, text):
            self.pieces.setdefault(row, []).append(text)

        def on_complete(self, row, text):
            self.complete[row] = text

    config, samples, template, result = planned(tiny_model, small_dataset, generation=GenerationConfig(max_new_tokens=6))
    result.batch_size = 5
    runtime = load(result, template)
    sink = Collect()
    with TranscriptWriter(tmp_path / "streamed.jsonl") as writer:
        execute(in_process(runtime, config), samples, config, writer, config.config_hash(), sink=sink)
    records = read_transcript(tmp_path / "streamed.jsonl")
    assert set(sink.complete) == set(range(5))
    for row, record in enumerate(records):
        assert sink.complete[row] == record["response"]
        assert record["response"].startswith("".join(sink.pieces.get(row, [])))
        assert len(sink.pieces.get(row, [])) >= min(2, record["completion_tokens"] - 2)


def test_the_progress_display_counts_completions_on_a_terminal_only(tmp_path, tiny_model, small_dataset):
    import io

    from pipeline.core.console import ProgressSink

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    shown = ProgressSink(5, Terminal(), every_s=0)
    run_execute(tmp_path, tiny_model, small_dataset, sink=shown)
    assert shown.done == 5 and "execute   5 generations" in shown.out.getvalue()
    shown.close()
    assert shown.out.getvalue().endswith("\r\033[K")
    piped = ProgressSink(5, io.StringIO(), every_s=0)
    run_execute(tmp_path, tiny_model, small_dataset, sink=piped)
    assert piped.done == 5 and piped.out.getvalue() == ""


def test_a_log_line_clears_the_progress_line_before_it_is_printed():
    import io
    import logging

    from pipeline.core.console import ProgressSink

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    screen = Terminal()
    handler = logging.StreamHandler(screen)
    logging.getLogger().addHandler(handler)
    try:
        progress = ProgressSink(3, screen, every_s=3600, kept=2)
        progress.on_complete(0, "")  # the first is shown at once, the second not before an hour
        progress.on_complete(1, "")
        logging.getLogger("pipeline.test").warning("execute: batch 1 done")
        progress.close()
        logging.getLogger("pipeline.test").warning("after")
    finally:
        logging.getLogger().removeHandler(handler)
    assert screen.getvalue() == ("\rexecute   1 generations, " + screen.getvalue().split(", ")[1].split("/s")[0]
                                 + "/s (3 answers to give; 2 kept from before)\r\033[Kexecute: batch 1 done\nafter\n")


def test_system_prompt_reaches_the_model(tmp_path, tiny_model, small_dataset):
    records = run_execute(tmp_path, tiny_model, small_dataset, session=SessionConfig(system_prompt="Be exact."))
    plain = run_execute(tmp_path, tiny_model, small_dataset)
    assert records[0]["messages"][0] == {"role": "system", "content": "Be exact."}
    # character-level tokens, plus one token each for the <|system|> and <|end|> markers
    assert records[0]["prompt_tokens"] == plain[0]["prompt_tokens"] + len("Be exact.") + 2


def test_completion_cuts_at_end_of_turn_and_stop_strings(tiny_model):
    tokenizer = load_tokenizer(resolve(RuntimeConfig(model=str(tiny_model))))
    end = tokenizer.convert_tokens_to_ids("<|end|>")
    ids = tokenizer("42 apples", add_special_tokens=False)["input_ids"]
    stopped = _completion(tokenizer, ids[:2] + [end, 0, 0], {end}, [])
    assert (stopped.text, stopped.tokens, stopped.finish_reason) == ("42", 3, "stop")
    cut = _completion(tokenizer, ids, {end}, [" app"])
    assert (cut.text, cut.finish_reason) == ("42", "stop")
    assert _completion(tokenizer, ids, {end}, []).finish_reason == "length"


def test_left_truncation_keeps_the_end_of_the_prompt_and_flags_the_sample(tmp_path, tiny_model):
    dataset = write_jsonl(tmp_path / "d.jsonl", [{"id": "long", "prompt": "y" * 300}, {"id": "short", "prompt": "hi"}])
    records = run_execute(tmp_path, tiny_model, dataset, session=SessionConfig(truncation="left"))
    by_id = {r["sample_id"]: r for r in records}
    assert by_id["long"]["truncated"] and not by_id["short"]["truncated"]
    assert by_id["long"]["prompt_tokens"] == 128 - 8  # context - max_new_tokens
    assert by_id["short"]["prompt_tokens"] < 20


def test_weights_offloaded_to_disk_generate_the_same_as_in_memory(tmp_path, tiny_model, small_dataset):
    baseline = run_execute(tmp_path, tiny_model, small_dataset)
    weights = (tiny_model / "model.safetensors").stat().st_size
    config = make_config(tiny_model, small_dataset)
    config.runtime.memory_limit, config.runtime.memory_margin, config.runtime.batch_size = str(weights * 3 // 4), 0.0, 1
    result, samples, template = plan_in_process(config)
    assert result.backend_options["offload"] == "disk"
    runtime = load(result, template, offload_folder=tmp_path / "offload")
    assert "disk" in set(runtime.model.hf_device_map.values())
    with TranscriptWriter(tmp_path / "offloaded.jsonl") as writer:
        execute(in_process(runtime, config), samples, config, writer, config.config_hash())
    offloaded = read_transcript(tmp_path / "offloaded.jsonl")
    assert [r["response"] for r in offloaded] == [r["response"] for r in baseline]


def test_a_weight_file_that_breaks_at_load_time_names_the_file(tmp_path, tiny_model, small_dataset):
    """A header that passes resolve's size checks but whose tensors overlap: only safetensors itself notices."""
    folder = Path(shutil.copytree(tiny_model, tmp_path / "overlap"))
    overlap_two_tensors(folder / "model.safetensors")
    config = make_config(folder, small_dataset)
    result, _, template = plan_in_process(config)
    with pytest.raises(LoadError) as raised:
        load(result, template)
    assert "model.safetensors" in str(raised.value) and "download or copy it again" in str(raised.value)


# --- summarize -------------------------------------------------------------------------------

def test_summarize_on_known_records():
    records = [{"score": s, "prompt_tokens": 10, "completion_tokens": c, "latency_s": l}
               for s, c, l in [(1.0, 3, 0.1), (0.0, 3, 0.2), (1.0, 2, 0.3), (None, 4, 0.4)]]
    summary = summarize(records, {"execute": 2.0, "load": 1.0})
    assert summary.num_samples == 4 and summary.num_scored == 3
    assert summary.accuracy == pytest.approx(2 / 3) and summary.correct == 2
    assert summary.completion_tokens == 12 and summary.tokens_per_second == pytest.approx(6.0)
    assert (summary.latency_p50_s, summary.latency_p95_s) == (0.2, 0.4)
    assert summary.metrics()["accuracy"] == pytest.approx(2 / 3)


def test_percentile_nearest_rank():
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50.0 and percentile(values, 95) == 95.0 and percentile([], 50) == 0.0


# --- scripted conversations ------------------------------------------------------------------

def test_each_turn_sees_the_history_so_far_and_is_its_own_record(tmp_path, tiny_model):
    dataset = write_jsonl(tmp_path / "talks.jsonl", [
        {"id": "c1", "turns": [{"content": "What is 1+1?", "reference": "2"}, "And 2+2?", "And 3+3?"]},
        {"id": "c2", "messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}],
         "turns": ["What is 5+5?"]},
        {"id": "solo", "prompt": "What is 7+7?"},
    ])
    config, samples, template, result = planned(tiny_model, dataset, session=SessionConfig(autosave=True))
    runtime = load(result, template)
    with TranscriptWriter(tmp_path / "transcript.jsonl") as writer:
        assert execute(in_process(runtime, config), samples, config, writer, config.config_hash()) == 5
    records = {r["sample_id"]: r for r in read_transcript(tmp_path / "transcript.jsonl")}
    assert set(records) == {"solo", "c1#0", "c1#1", "c1#2", "c2#0"}
    assert (records["c1#1"]["conversation_id"], records["c1#1"]["turn"]) == ("c1", 1)
    assert records["c1#0"]["reference"] == "2" and records["c1#1"]["reference"] is None
    second = records["c1#1"]["messages"]
    assert second[-3:] == [{"role": "user", "content": "What is 1+1?"},
                           {"role": "assistant", "content": records["c1#0"]["response"]},
                           {"role": "user", "content": "And 2+2?"}]
    assert records["c2#0"]["messages"][:2] == [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]
    assert records["c1#2"]["prompt_tokens"] > records["c1#1"]["prompt_tokens"] > records["c1#0"]["prompt_tokens"]
    saved = json.loads((tmp_path / "conversations" / "c1.json").read_text())
    assert len(saved) == 6 and saved[-1] == {"role": "assistant", "content": records["c1#2"]["response"]}


def test_a_saved_conversation_is_loaded_as_history(tmp_path, tiny_model, small_dataset):
    history = tmp_path / "history.json"
    history.write_text(json.dumps([{"role": "user", "content": "Remember 9."}, {"role": "assistant", "content": "OK"}]))
    records = run_execute(tmp_path, tiny_model, small_dataset, session=SessionConfig(history=str(history)))
    assert records[0]["messages"][:2] == [{"role": "user", "content": "Remember 9."},
                                          {"role": "assistant", "content": "OK"}]
    history.write_text("[{nope")
    with pytest.raises(UserError, match="session.history=.*not valid JSON"):
        planned(tiny_model, small_dataset, session=SessionConfig(history=str(history)))
    with pytest.raises(UserError, match="session.history=.*file not found"):
        planned(tiny_model, small_dataset, session=SessionConfig(history=str(tmp_path / "missing.json")))


def test_a_turn_that_outgrows_the_context_is_an_error_record_and_the_rest_goes_on(tmp_path, tiny_model):
    dataset = write_jsonl(tmp_path / "long-talk.jsonl", [
        {"id": "long", "turns": ["a" * 50, "b" * 50, {"content": "c" * 50, "reference": "x"}]},
        {"id": "short", "turns": ["hi", "again"]},
    ])
    config, samples, template, result = planned(tiny_model, dataset)
    assert any("may outgrow the context" in w for w in result.warnings)
    runtime = load(result, template)
    with TranscriptWriter(tmp_path / "t.jsonl") as writer:
        execute(in_process(runtime, config), samples, config, writer, config.config_hash())
    records = {r["sample_id"]: r for r in read_transcript(tmp_path / "t.jsonl")}
    assert {"long#0", "short#0", "short#1"} <= set(records)
    failed = [r for r in records.values() if r["status"] == "error"]
    assert len(failed) == 1 and failed[0]["conversation_id"] == "long"
    assert "does not fit the model's context of 128" in failed[0]["error"] and "ends here" in failed[0]["error"]
    assert max(r["turn"] for r in records.values() if r["conversation_id"] == "long") == failed[0]["turn"]
    config.execute.fail_fast = True
    with TranscriptWriter(tmp_path / "t2.jsonl") as writer, pytest.raises(UserError, match="execute.fail_fast=true"):
        execute(in_process(runtime, config), samples, config, writer, config.config_hash())
