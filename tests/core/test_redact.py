"""Secrets stay out of MLflow: params, tags, run names and uploaded artifacts."""

import json

import pytest
import yaml

from pipeline.core.config import TrackingConfig
from pipeline.core.redact import (
    MASK,
    is_secret_key,
    redact,
    redact_overrides,
    redacted_text,
)
from pipeline.tracking.runs import MAX_PARAM_LENGTH, Tracker, params_for_mlflow


@pytest.mark.parametrize("key", ["runtime.api_key", "hub_token", "+runtime.hf_token", "db.password", "aws.secret_key",
                                 "apikey", "gcp.credentials"])
def test_credential_names_are_secret(key):
    assert is_secret_key(key)


@pytest.mark.parametrize("key", ["generation.max_new_tokens", "prompt_tokens", "tokenizer", "eos_token",
                                 "session.system_prompt", "tracking.uri"])
def test_generation_settings_are_not_secret(key):
    assert not is_secret_key(key)


def test_params_hide_secrets_and_respect_mlflow_limits():
    params = params_for_mlflow({"tracking.uri": "https://bob:s3cret@mlflow.example:5000", "runtime.api_key": "sk-123",
                                "hub_token": "hf_abc", "generation.max_new_tokens": 8,
                                "session.system_prompt": "x" * 10000, "limit": None,
                                "sweep.overrides": "+runtime.hf_token=hf_abc generation.seed=3"})
    assert params["tracking.uri"] == "https://***@mlflow.example:5000"
    assert params["runtime.api_key"] == "***" and params["hub_token"] == "***"
    assert params["generation.max_new_tokens"] == "8"
    assert params["sweep.overrides"] == "+runtime.hf_token=*** generation.seed=3"
    assert len(params["session.system_prompt"]) == MAX_PARAM_LENGTH and params["limit"] == "null"


def test_redact_masks_nested_values_and_overrides():
    config = {"tracking": {"uri": "http://bob:s3cret@host:5000"}, "hub": {"token": "hf_abc", "max_new_tokens": 4},
              "overrides": ["runtime.hf_token=hf_abc", "generation.seed=3"]}
    assert redact(config) == {"tracking": {"uri": "http://***@host:5000"}, "hub": {"token": "***", "max_new_tokens": 4},
                              "overrides": ["runtime.hf_token=***", "generation.seed=3"]}


def test_redacted_text_parses_yaml_and_json_and_survives_a_torn_file(tmp_path):
    (tmp_path / "config.yaml").write_text("hub:\n  token: hf_abc\n  revision: main\n")
    (tmp_path / "plan.json").write_text(json.dumps({"api_key": "sk-1", "device": "cpu"}))
    (tmp_path / "torn.json").write_text('{"uri": "http://bob:s3cret@host", "api_')
    assert yaml.safe_load(redacted_text(tmp_path / "config.yaml")) == {"hub": {"token": "***", "revision": "main"}}
    assert json.loads(redacted_text(tmp_path / "plan.json")) == {"api_key": "***", "device": "cpu"}
    assert "s3cret" not in redacted_text(tmp_path / "torn.json")


def test_tracker_uploads_nothing_secret(tmp_path):
    """Tags, run name and artifacts read back through MLflow's client carry no secret."""
    run_dir = tmp_path / "run"
    (run_dir / ".hydra").mkdir(parents=True)
    overrides = ["tracking.uri=http://bob:s3cret@host:5000", "+runtime.hf_token=hf_abc123", "generation.seed=3"]
    (run_dir / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    (run_dir / ".hydra" / "config.yaml").write_text(yaml.safe_dump({"runtime": {"hf_token": "hf_abc123"}}))
    (run_dir / "run.log").write_text("connecting to http://bob:s3cret@host:5000\n")
    (run_dir / "transcript.jsonl").write_text('{"id": "a", "response": "7"}\n')

    tracker = Tracker(TrackingConfig(uri=f"sqlite:///{tmp_path / 'mlflow.db'}"))
    tracker.start(run_name=" ".join(overrides), tags={"overrides": " ".join(overrides)})
    tracker.log_artifacts(run_dir)
    tracker.finish("FINISHED")

    run = tracker.client.get_run(tracker.run_id)
    uploaded = tmp_path / "uploaded"
    tracker.client.download_artifacts(tracker.run_id, "", str(uploaded))
    files = sorted(p.relative_to(uploaded).as_posix() for p in uploaded.rglob("*") if p.is_file())
    assert files == [".hydra/config.yaml", ".hydra/overrides.yaml", "run.log", "transcript.jsonl"]
    texts = [run.info.run_name, run.data.tags["overrides"]] + [(uploaded / f).read_text() for f in files]
    assert not any("s3cret" in text or "hf_abc123" in text for text in texts)
    assert "generation.seed=3" in run.data.tags["overrides"]
    assert yaml.safe_load((uploaded / ".hydra" / "overrides.yaml").read_text())[1] == "+runtime.hf_token=***"


@pytest.mark.parametrize("text", [
    "session.tools=[{_target_: keyed.add, api_key: sk-live-SECRET123}]",
    "[{'_target_': 'keyed.add', 'api_key': 'sk-live-SECRET123'}]",
    '{"hf_token": "sk-live-SECRET123", "other": 1}',
    "session.tools=[{_target_: search.web, password: 'sk-live-SECRET123 with spaces'}]",
])
def test_secrets_inside_a_value_are_masked(text):
    masked = redact_overrides(text)
    assert "SECRET123" not in masked and MASK in masked
    assert "keyed.add" in masked or "other" in masked or "search.web" in masked


@pytest.mark.parametrize("text", [
    "generation.max_new_tokens=8", "{eos_token: '<|end|>'}", "http://127.0.0.1:5000/#/runs", "time 14:38",
    "[{'_target_': 'pipeline.answering.demo_tools.add'}]",
])
def test_values_that_only_look_like_pairs_stay(text):
    assert redact_overrides(text) == text
