"""Speed features in process: model reuse and its key, the backend options the plan picks, the
device a parallel job gets, the sweep objective, and the transcript's background writer."""

from __future__ import annotations

import math
import threading
import time
from dataclasses import replace

import pytest

from pipeline.backends.transformers import plan as plan_stage
from pipeline.backends.transformers import reuse
from pipeline.backends.transformers.backend_options import (
    COMPILE_MIN_DECODE_STEPS,
    choose_backend_options,
)
from pipeline.backends.transformers.placement import spread_device
from tests.helpers.planning import plan_in_process
from pipeline.core.config import (
    GenerationConfig,
    PipelineConfig,
    RuntimeConfig,
    TrackingConfig,
)
from pipeline.core.errors import ConfigError, UserError
from pipeline.core.records import Summary
from pipeline.core.transcript import read_transcript
from pipeline.core.background_writer import BackgroundEmitter
from pipeline.run.runner import run
from pipeline.core.objective import objective_value
from pipeline.stages.resolve import resolve
from tests.conftest import make_config
from tests.helpers.tiny_model import build_tiny_model


@pytest.fixture(autouse=True)
def _nothing_held():
    reuse.release()
    yield
    reuse.release()


def planned(config):
    return plan_in_process(config)[0]


def test_a_runtime_is_reused_while_its_load_settings_match_and_replaced_when_they_change(tiny_model, small_dataset,
                                                                                      tmp_path):
    first = make_config(tiny_model, small_dataset)
    sampled = make_config(tiny_model, small_dataset, generation=GenerationConfig(temperature=0.9, seed=4, top_k=3))
    runtime, record = reuse.acquire(planned(first), None, False, tmp_path / "job0")
    assert not record.reused and record.kept and record.loads_in_process >= 1

    again, second = reuse.acquire(planned(sampled), None, False, tmp_path / "job1")
    assert second.reused and second.reused_from == str(tmp_path / "job0") and second.key == record.key
    assert again.model is runtime.model and again.plan.generation["temperature"] == 0.9  # its own plan

    other = build_tiny_model(tmp_path / "other", seed=1)
    changed, third = reuse.acquire(planned(make_config(other, small_dataset)), None, False, tmp_path / "job2")
    assert not third.reused and third.key != record.key and changed.model is not runtime.model
    assert third.loads_in_process == record.loads_in_process + 1 and "changed" in third.reason
    assert reuse.held_key() == third.key  # the first model was let go

    fresh, off = reuse.acquire(planned(make_config(other, small_dataset)), None, False, tmp_path / "job3", reuse=False)
    assert not off.reused and not off.kept and fresh.model is not changed.model and reuse.held_key() is None


def test_the_key_holds_what_load_uses_and_nothing_else(tiny_model, small_dataset):
    base = planned(make_config(tiny_model, small_dataset))
    same = planned(make_config(tiny_model, small_dataset, generation=GenerationConfig(temperature=1.0, max_new_tokens=3)))
    assert reuse.load_key(base, False) == reuse.load_key(same, False)
    assert reuse.load_key(base, False) != reuse.load_key(base, True)  # remote code
    for change in ({"dtype": "bfloat16"}, {"device": "cuda:1"},
                   {"backend_options": {**base.backend_options, "attn_implementation": "eager"}},
                   {"backend_options": {**base.backend_options, "compile": True}}):
        assert reuse.load_key(replace(base, **change), False) != reuse.load_key(base, False), change


def test_jobs_that_share_a_runtime_leak_nothing_into_each_other(tiny_model, small_dataset, tmp_path):
    """sampled, greedy, sampled again: each job's answers are what it gets on a fresh load."""
    def job(name: str, generation: GenerationConfig, reuse_model: bool = True) -> list[str]:
        config = make_config(tiny_model, small_dataset, generation=generation,
                             tracking=TrackingConfig(enabled=False))
        config.runtime.reuse = reuse_model
        run(config, tmp_path / name)
        return [r["response"] for r in read_transcript(tmp_path / name / "transcript.jsonl")]

    sampling = GenerationConfig(temperature=1.2, seed=7, max_new_tokens=6)
    greedy = GenerationConfig(max_new_tokens=6)
    first, plain, second = job("a", sampling), job("b", greedy), job("c", sampling)
    assert first == second
    assert plain == job("fresh", greedy, reuse_model=False)
    assert first != plain  # the settings did reach the shared model
    loads = [__import__("json").loads((tmp_path / n / "load.json").read_text()) for n in ("a", "b", "c")]
    assert [entry["reused"] for entry in loads] == [False, True, True]


def test_compile_is_chosen_on_cuda_for_long_runs_only_and_refused_with_a_dynamic_cache(tiny_model, small_dataset):
    config = make_config(tiny_model, small_dataset)
    options, reasons = choose_backend_options(config, "cpu", "none", 16, 10_000)
    assert options == {"compile": False, "cache_implementation": "dynamic", "continuous_batching": False,
                       "threads": options["threads"]}
    assert "off on cpu" in reasons["compile"]
    long_run = COMPILE_MIN_DECODE_STEPS // config.generation.max_new_tokens * 16
    options, reasons = choose_backend_options(config, "cuda:0", "none", 16, long_run)
    assert options["compile"] and options["cache_implementation"] == "static", reasons
    assert not choose_backend_options(config, "cuda:0", "none", 16, 16)[0]["compile"]
    assert not choose_backend_options(config, "cuda:0", "cpu", 16, long_run)[0]["compile"]
    config.runtime.compile, config.runtime.cache_implementation = True, "dynamic"
    with pytest.raises(UserError, match="runtime.compile=true needs a static KV cache"):
        choose_backend_options(config, "cpu", "none", 16, 16)


def test_continuous_batching_is_refused_where_it_would_change_results(tiny_model, small_dataset):
    config = make_config(tiny_model, small_dataset, generation=GenerationConfig(temperature=0.7))
    config.runtime.continuous_batching = True
    with pytest.raises(UserError, match="runtime.continuous_batching=true cannot run with generation.temperature"):
        choose_backend_options(config, "cpu", "none", 16, 16)
    config.generation = GenerationConfig(stop=["\n"])
    with pytest.raises(UserError, match="generation.stop"):
        choose_backend_options(config, "cpu", "none", 16, 16)
    config.generation = GenerationConfig()
    assert choose_backend_options(config, "cpu", "none", 16, 16)[0]["continuous_batching"]


def test_bad_backend_option_values_name_the_key():
    with pytest.raises(ConfigError, match="runtime.compile='yes'"):
        RuntimeConfig(compile="yes")
    with pytest.raises(ConfigError, match="runtime.cache_implementation='sliding'"):
        RuntimeConfig(cache_implementation="sliding")


def test_parallel_jobs_on_several_gpus_each_get_their_own(monkeypatch):
    assert [spread_device(job, 4) for job in range(6)] == ["cuda:0", "cuda:1", "cuda:2", "cuda:3", "cuda:0", "cuda:1"]
    monkeypatch.setattr(plan_stage, "accelerators", lambda: (True, False, 4))
    monkeypatch.setattr("pipeline.backends.transformers.placement.parallel_job_num", lambda: 6)
    device, why = plan_stage.choose_device(RuntimeConfig(device="auto"))
    assert device == "cuda:2" and "job 6 of a parallel sweep" in why
    assert plan_stage.choose_device(RuntimeConfig(device="cuda:0"))[0] == "cuda:0"  # explicit is kept
    # a single run, or jobs in order
    monkeypatch.setattr("pipeline.backends.transformers.placement.parallel_job_num", lambda: None)
    assert plan_stage.choose_device(RuntimeConfig(device="auto"))[0] == "cuda"
    monkeypatch.setattr(plan_stage, "accelerators", lambda: (True, False, 1))
    monkeypatch.setattr("pipeline.backends.transformers.placement.parallel_job_num", lambda: 3)
    assert plan_stage.choose_device(RuntimeConfig(device="auto"))[0] == "cuda"  # SLURM gave the job one device


def test_the_objective_is_any_numeric_summary_field_or_pass_at_k():
    summary = Summary(num_samples=4, num_scored=4, num_errors=0, accuracy=0.75, correct=3, prompt_tokens=40,
                      completion_tokens=12, tokens_per_second=120.0, latency_p50_s=0.1, latency_p95_s=0.2,
                      ttft_p50_s=0.01, stage_seconds={})
    assert objective_value(summary, "accuracy") == 0.75
    assert objective_value(summary, "tokens_per_second") == 120.0
    assert math.isnan(objective_value(replace(summary, accuracy=None), "accuracy"))
    assert math.isnan(objective_value(summary, "pass_at_2"))  # a summary without pass@k
    assert math.isnan(objective_value(None, "accuracy"))  # the job failed
    assert PipelineConfig(objective="latency_p95_s").objective == "latency_p95_s"
    with pytest.raises(ConfigError, match="pipeline.objective='speed'.*tokens_per_second"):
        PipelineConfig(objective="speed")


def test_the_background_writer_keeps_order_drains_on_error_and_raises_a_failed_write():
    written: list[int] = []
    main_thread = threading.get_ident()
    threads = set()

    def slow(batch):
        threads.add(threading.get_ident())
        time.sleep(0.01)
        written.extend(batch)

    with pytest.raises(RuntimeError, match="stage failed"):
        with BackgroundEmitter(slow) as emit:
            for start in range(0, 20, 4):
                emit(range(start, start + 4))
            raise RuntimeError("stage failed")
    assert written == list(range(20)) and main_thread not in threads  # all of it, in order, off the caller's thread

    def broken(batch):
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        with BackgroundEmitter(broken) as emit:
            emit([1])


def test_a_static_cache_and_continuous_batching_give_the_greedy_answers_of_the_default(tiny_model, small_dataset,
                                                                                     tmp_path):
    def answers(name: str, **runtime_options) -> list[dict]:
        config = make_config(tiny_model, small_dataset, generation=GenerationConfig(max_new_tokens=4),
                             tracking=TrackingConfig(enabled=False))
        for key, value in runtime_options.items():
            setattr(config.runtime, key, value)
        run(config, tmp_path / name)
        plan = __import__("json").loads((tmp_path / name / "plan.json").read_text())
        for key, value in runtime_options.items():
            assert plan["backend_options"][key] == value
        return [(r["sample_id"], r["response"], r["completion_tokens"])
                for r in read_transcript(tmp_path / name / "transcript.jsonl")]

    default = answers("default")
    assert answers("static", cache_implementation="static") == default
    continuous = answers("continuous", continuous_batching=True)
    assert sorted(continuous) == sorted(default)


@pytest.mark.parametrize("multiple", [1, 16])
def test_prompts_encoded_once_are_padded_as_the_tokenizer_pads_them(multiple):
    from transformers import AutoTokenizer

    from pipeline.backends.transformers.generate import left_padded
    from pipeline.core.config import ASSETS_DIR

    tokenizer = AutoTokenizer.from_pretrained(ASSETS_DIR / "demo_model")
    tokenizer.padding_side = "left"
    prompts = ["12+7=", "1+1=", "a much longer prompt than the others, 98+76="]
    ids = tokenizer(prompts, add_special_tokens=False)["input_ids"]
    ours = left_padded(ids, tokenizer.pad_token_id, multiple, "cpu")
    theirs = tokenizer(prompts, add_special_tokens=False, padding=True, return_tensors="pt",
                       pad_to_multiple_of=multiple if multiple > 1 else None)
    assert ours["input_ids"].tolist() == theirs["input_ids"].tolist()
    assert ours["attention_mask"].tolist() == theirs["attention_mask"].tolist()
    assert ours["input_ids"].shape[1] % multiple == 0


def test_the_default_launcher_counts_as_sequential_and_joblib_as_parallel():
    """Jobs in order share cuda:0 (and so one loaded model); only a parallel launcher spreads them."""
    from hydra import compose, initialize_config_dir

    from pipeline.backends.transformers.placement import SEQUENTIAL_LAUNCHERS
    from pipeline.core.config import CONF_DIR, register

    register()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        default = compose("config", return_hydra_config=True).hydra.launcher._target_
        joblib = compose("config", overrides=["hydra/launcher=joblib"], return_hydra_config=True).hydra.launcher._target_
    assert default in SEQUENTIAL_LAUNCHERS and joblib not in SEQUENTIAL_LAUNCHERS
