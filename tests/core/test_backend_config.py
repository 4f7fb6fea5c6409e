"""Choosing the backend in the config: `backend=transformers` (the default) or `backend=openai`.

The `backend` group's files against the schema and OpenAIConfig's defaults; the mistakes of
choosing (a setting of the other backend, an in-process runtime setting with a server, an
OpenAIConfig value outside what is allowed) as one line, exit 2, nothing created, checked
before anything loads; resolve for a served model; and secrets under backend.* kept out of the
run folder's config.json and MLflow's params.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from pipeline.backends import registry
from pipeline.backends.openai.config import OpenAIConfig
from pipeline.core.config import CONF_DIR, BackendConfig, RuntimeConfig, to_config
from pipeline.core.redact import MASK, redact
from pipeline.tracking.runs import config_params, params_for_mlflow
from tests.conftest import run_pipeline

SERVER = ["backend=openai", "backend.base_url=http://127.0.0.1:9/v1", "runtime.model=served-model"]


def composed(overrides: list[str]):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return to_config(compose(config_name="config", overrides=overrides))


def test_the_default_backend_is_transformers_with_no_server_settings():
    config = composed([])
    assert config.backend.name == "transformers" and config.backend.values == {}
    assert registry.effective_settings(config.backend) == {"name": "transformers"}
    assert config.runtime.device == "auto" and config.runtime.batch_size == 16  # what users type today is unchanged


@pytest.mark.parametrize("name", registry.names())
def test_each_kinds_yaml_holds_every_setting_at_its_default(name):
    """conf/backend/<name>.yaml lists the kind's settings dataclass, with its defaults (no drift)."""
    backend = composed([f"backend={name}"]).backend
    defaults = registry.defaults(name)
    assert backend.name == name and set(backend.values) == set(defaults)
    effective = registry.effective_settings(backend)
    assert effective == {"name": name, **{k: list(v) if isinstance(v, tuple) else v for k, v in defaults.items()}}


def test_openai_settings_reach_openai_config():
    backend = composed(SERVER + ["backend.max_concurrency=3", "+backend.headers.X-Team=eval",
                                 "backend.token_limit_param=max_completion_tokens"]).backend
    settings = registry.settings(backend)
    assert isinstance(settings, OpenAIConfig)
    assert (settings.base_url, settings.max_concurrency, settings.headers, settings.token_limit_param) == (
        "http://127.0.0.1:9/v1", 3, {"X-Team": "eval"}, "max_completion_tokens")
    assert settings.modalities == ("text",)


def test_an_unset_openai_setting_takes_openai_configs_default():
    backend = BackendConfig(name="openai", base_url="http://h:1/v1")  # backend.name=openai without the group file
    assert registry.settings(backend) == OpenAIConfig(base_url="http://h:1/v1")


# (id, overrides, the one line the mistake must give)
MISTAKES = [
    ("server url with the default backend", ["backend.base_url=http://127.0.0.1:8000/v1"],
     "backend.base_url is a setting of backend=openai, not backend=transformers: add backend=openai"),
    ("concurrency with the default backend", ["backend.max_concurrency=4"],
     "backend.max_concurrency is a setting of backend=openai, not backend=transformers: add backend=openai"),
    ("a header with the default backend", ["+backend.headers.X-Team=eval"],
     "backend.headers is a setting of backend=openai, not backend=transformers: add backend=openai"),
    ("device with a server", SERVER + ["runtime.device=cpu"],
     "runtime.device=cpu is a setting of backend=transformers, not backend=openai: the server decides it; "
     "leave runtime.device at auto"),
    ("the cpu runtime with a server", SERVER + ["runtime=cpu"], "runtime.device=cpu is a setting of backend=transformers"),
    ("dtype with a server", SERVER + ["runtime.dtype=bfloat16"], "runtime.dtype=bfloat16 is a setting of backend=transformers"),
    ("offload with a server", SERVER + ["runtime.offload=disk"], "runtime.offload=disk is a setting of backend=transformers"),
    ("compile with a server", SERVER + ["runtime.compile=true"], "runtime.compile=true is a setting of backend=transformers"),
    ("attention with a server", SERVER + ["runtime.attn_implementation=eager"],
     "runtime.attn_implementation=eager is a setting of backend=transformers"),
    ("memory limit with a server", SERVER + ["runtime.memory_limit=6GiB"],
     "runtime.memory_limit=6GiB is a setting of backend=transformers"),
    ("batch size auto with a server", SERVER + ["runtime.batch_size=auto"],
     "runtime.batch_size=auto is a setting of backend=transformers, not backend=openai: give a number"),
    ("no concurrency", SERVER + ["backend.max_concurrency=0"],
     "backend.max_concurrency=0 is not allowed: expected a whole number >= 1"),
    ("base url not a url", ["backend=openai", "backend.base_url=localhost:8000"],
     "backend.base_url='localhost:8000' is not allowed: expected an http:// or https:// URL"),
    ("unknown token limit field", SERVER + ["backend.token_limit_param=max_length"],
     "backend.token_limit_param='max_length' is not allowed: expected max_tokens or max_completion_tokens"),
    ("timeout zero", SERVER + ["backend.timeout_s=0"], "backend.timeout_s=0 is not allowed: expected a number > 0"),
    ("concurrency not a number", SERVER + ["backend.max_concurrency=many"], "backend.max_concurrency='many' is not allowed"),
    ("unknown backend", ["backend=tgi"], "backend=tgi: no such option; available: openai, transformers"),
    ("unknown backend name", ["backend.name=tgi"], "backend.name='tgi' is not allowed: expected transformers, openai"),
    ("a key no backend has", SERVER + ["+backend.colour=red"],
     "backend.colour: backend=openai has no such setting; its settings: api_key_env, api_version"),
]


@pytest.mark.parametrize("overrides, line", [m[1:] for m in MISTAKES], ids=[m[0] for m in MISTAKES])
def test_a_backend_mistake_is_one_line_and_creates_nothing(overrides, line, tmp_path, monkeypatch, capsys):
    """Through `pipeline.__main__.main()` (what `python -m pipeline` runs), before Hydra makes a folder."""
    code, stderr = run_main(overrides + ["tracking=none"], tmp_path, monkeypatch, capsys)
    assert code == 2, stderr
    assert stderr.strip().splitlines() == [stderr.strip()] and "Traceback" not in stderr
    assert line in stderr
    assert list(tmp_path.iterdir()) == []


def test_a_key_typed_as_api_key_env_is_refused_without_echoing_it(tmp_path, monkeypatch, capsys):
    code, stderr = run_main(SERVER + ["backend.api_key_env=sk-live-SECRET123"], tmp_path, monkeypatch, capsys)
    assert code == 2 and "backend.api_key_env" in stderr and "the NAME of an environment variable" in stderr
    assert "SECRET123" not in stderr and list(tmp_path.iterdir()) == []


def test_backend_mistakes_through_the_real_command_line(tmp_path):
    """A few of the cases above through a real `python -m pipeline`: exit 2, one line, no runs/ folder."""
    for overrides, line in [(["backend.base_url=http://127.0.0.1:8000/v1"], "add backend=openai"),
                            (SERVER + ["runtime.device=cpu"], "runtime.device=cpu is a setting of backend=transformers"),
                            (SERVER + ["backend.max_concurrency=0"], "backend.max_concurrency=0 is not allowed")]:
        result = run_pipeline(overrides, cwd=tmp_path)
        assert result.returncode == 2, result.stderr
        assert line in result.stderr and "Traceback" not in result.stderr + result.stdout
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
        assert not (tmp_path / "runs").exists()


def run_main(argv: list[str], cwd: Path, monkeypatch, capsys) -> tuple[int, str]:
    from pipeline.__main__ import main

    monkeypatch.chdir(cwd)
    monkeypatch.setattr(sys, "argv", ["pipeline", *argv])
    monkeypatch.delenv("PIPELINE_RUN_TOKEN", raising=False)
    with pytest.raises(SystemExit) as exited:
        main()
    return exited.value.code, capsys.readouterr().err


def test_resolve_with_a_server_backend_reads_nothing_and_has_no_digest(tmp_path, monkeypatch):
    """runtime.model is the served id: not an alias, a folder or a repo id looked up (none of them exists here)."""
    from pipeline.stages import resolve as stage

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(stage, "locate", lambda *a: pytest.fail("a served model is not looked up on disk or in the hub"))
    config = composed(["backend=openai", "backend.base_url=https://bob:s3cret@llm.example:8443/v1",
                       "runtime.model=meta-llama/Llama-3.1-8B-Instruct"])
    model = stage.resolve(config.runtime, config.backend)
    assert (model.kind, model.reference, model.weights_digest, model.path) == (
        "served", "meta-llama/Llama-3.1-8B-Instruct", None, "")
    assert model.endpoint == "https://***@llm.example:8443/v1"
    assert model.weight_files == [] and model.parameters == 0 and model.context_length == 0  # the plan asks the server
    assert model.modalities == ["text"]


def test_resolve_with_the_default_backend_still_reads_the_folder():
    from pipeline.stages.resolve import resolve

    config = composed(["runtime.model=demo"])
    model = resolve(config.runtime, config.backend)
    assert model.kind == "local-path" and model.weights_digest and model.endpoint is None
    assert resolve(RuntimeConfig(model="demo")).weights_digest == model.weights_digest  # without a backend: as before


SECRET_HEADERS = ["+backend.headers.Authorization='Bearer sk-live-SECRET1'", "+backend.headers.X-Api-Token=tok-SECRET2"]


def test_header_values_and_url_credentials_stay_out_of_config_json_and_params():
    config = composed(["backend=openai", "backend.base_url=https://bob:pw-SECRET3@llm.example/v1",
                       "runtime.model=served-model"] + SECRET_HEADERS)
    assert registry.settings(config.backend).headers == {"Authorization": "Bearer sk-live-SECRET1", "X-Api-Token": "tok-SECRET2"}
    stored = redact(config.to_dict())  # what config.json holds
    assert stored["backend"]["headers"] == {"Authorization": MASK, "X-Api-Token": MASK}  # names kept, values not
    assert stored["backend"]["base_url"] == "https://***@llm.example/v1"
    params = params_for_mlflow(config_params(config))
    assert "SECRET" not in json.dumps(stored) + json.dumps(params)
    assert params["backend.name"] == "openai" and params["backend.api_key_env"] == "OPENAI_API_KEY"
    assert params["backend.headers.Authorization"] == MASK and params["backend.headers.X-Api-Token"] == MASK
    assert params["backend.base_url"] == "https://***@llm.example/v1"
    assert params["backend.max_concurrency"] == "8" and params["backend.token_limit_param"] == "max_tokens"


def test_params_of_the_default_backend_name_it_and_nothing_of_the_server():
    params = params_for_mlflow(config_params(composed([])))
    assert params["backend.name"] == "transformers"
    assert [key for key in params if key.startswith("backend.")] == ["backend.name"]


def test_params_of_a_server_without_headers_say_so():
    params = params_for_mlflow(config_params(composed(SERVER)))
    assert params["backend.headers"] == "{}" and params["backend.timeout_s"] == "60.0"


@pytest.mark.parametrize("argv", [
    ["+backend.headers.Authorization='Bearer sk-live-SECRET1'", "generation.seed=3"],
    ["backend.headers='{Authorization: Bearer sk-live-SECRET1, X-Api-Token: tok-SECRET2}'", "backend=openai"],
    ["backend=openai", "+backend.headers.X-Api-Token=tok-SECRET2", "-m"],
])
def test_header_values_with_spaces_are_masked_in_overrides(argv, tmp_path):
    """The command line as run names and tags keep it (one text) and as Hydra's overrides.yaml keeps it
    (a list): every word of a header's value is masked, the next override is kept."""
    import yaml

    from pipeline.core.redact import mask_secrets_in_files, redact_overrides

    masked = redact_overrides(" ".join(argv))
    assert "SECRET" not in masked and "Bearer" not in masked
    assert masked.endswith(" " + argv[-1])
    overrides = tmp_path / "overrides.yaml"
    overrides.write_text(yaml.safe_dump(argv))
    mask_secrets_in_files([overrides])
    kept = yaml.safe_load(overrides.read_text())
    assert "SECRET" not in str(kept) and kept[-1] == argv[-1]


def test_until_resolve_with_a_server_prints_the_served_model_and_keeps_no_secret(tmp_path):
    result = run_pipeline(SERVER + ["pipeline.until=resolve", "tracking=none"] + SECRET_HEADERS, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    printed = json.loads(result.stdout[result.stdout.index("{"):result.stdout.rindex("}") + 1])
    assert (printed["kind"], printed["reference"], printed["weights_digest"]) == ("served", "served-model", None)
    files = [p for p in (tmp_path / "runs").rglob("*") if p.is_file()]
    assert any(p.name == "config.json" for p in files)
    assert not any("SECRET" in p.read_text(errors="replace") for p in files)
    assert "SECRET" not in result.stdout + result.stderr
