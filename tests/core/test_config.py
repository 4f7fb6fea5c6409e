"""Config composition for every group option and experiment, and validation before anything runs."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import pytest

from pipeline.backends import registry
from hydra import compose, initialize_config_dir

from pipeline.cli.precheck import check_command_line
from pipeline.core.config import CONF_DIR, Config, GenerationConfig, to_config
from pipeline.core.errors import ConfigError
from tests.conftest import run_pipeline

GROUPS = ["runtime", "generation", "session", "dataset", "tracking", "pipeline", "backend", "scoring"]


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


@pytest.mark.parametrize("group,option", [(g, o) for g in GROUPS for o in options(g)])
def test_every_group_option_composes_into_a_valid_config(group, option):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[f"{group}={option}"])
    config = to_config(cfg)
    assert isinstance(config, Config)
    registry.check(config)  # a backend's settings are checked by its kind
    option_values = compose_group_file(group, option)
    section = config.to_dict()[group]  # nested settings (session.tool_budget) as dicts, like the file
    for key, value in option_values.items():
        assert (section[key] == value or isinstance(value, str) and "${" in value
                or isinstance(value, dict) and value.items() <= section[key].items())  # a file may set a few nested keys


def compose_group_file(group: str, option: str) -> dict:
    from omegaconf import OmegaConf

    return OmegaConf.to_container(OmegaConf.load(CONF_DIR / group / f"{option}.yaml"), resolve=False)


@pytest.mark.parametrize("experiment", options("experiment"))
def test_every_experiment_composes_as_a_sweep_with_valid_jobs(experiment):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[f"+experiment={experiment}"], return_hydra_config=True)
    assert str(cfg.hydra.mode) == "RunMode.MULTIRUN"
    assert cfg.hydra.sweeper.params, "a saved sweep names what it sweeps"
    to_config(cfg)
    assert check_command_line([f"+experiment={experiment}"]) is None


def test_defaults_are_the_demo_model_greedy_on_the_demo_dataset():
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        config = to_config(compose(config_name="config"))
    assert config.runtime.model == "demo"
    assert config.generation.greedy
    assert Path(config.dataset.path).is_file()
    assert config.tracking.enabled and config.tracking.uri == "sqlite:///runs/mlflow.db"


@pytest.mark.parametrize("overrides,expected", [
    (["generation.foo=1"], "generation.foo: unknown key"),
    (["+generation.foo=1"], "generation.foo: unknown key"),
    (["+foo=1"], "foo"),
    (["generation.temperature=-0.5"], "generation.temperature=-0.5 is not allowed: expected a number >= 0"),
    (["generation.temperature=hot"], "generation.temperature='hot' is not allowed: expected a number"),
    (["generation.top_p=0"], "generation.top_p=0.0 is not allowed: expected null or a number in (0, 1]"),
    (["generation.top_p=1.01"], "generation.top_p=1.01 is not allowed"),
    (["generation.top_k=-1"], "generation.top_k=-1 is not allowed"),
    (["generation.max_new_tokens=0"], "generation.max_new_tokens=0 is not allowed: expected an integer >= 1"),
    (["generation.seed=-3"], "generation.seed=-3 is not allowed"),
    (["generation.repetition_penalty=0"], "generation.repetition_penalty=0.0 is not allowed"),
    (["runtime.batch_size=0"], "runtime.batch_size=0 is not allowed"),
    (["runtime.batch_size=two"], "runtime.batch_size='two' is not allowed: expected an integer >= 1 or auto"),
    (["runtime.batch_size=1.5"], "runtime.batch_size=1.5 is not allowed: expected an integer >= 1 or auto"),
    (["runtime.memory_limit=lots"], "runtime.memory_limit='lots' is not allowed: expected null or a size such as 512MiB"),
    (["runtime.memory_margin=1"], "runtime.memory_margin=1.0 is not allowed: expected a fraction in [0, 1)"),
    (["runtime.offload=gpu"], "runtime.offload='gpu' is not allowed: expected one of auto, cpu, disk, none"),
    (["runtime.attn_implementation=fast"], "runtime.attn_implementation='fast' is not allowed"),
    (["runtime.aliases.mine=/x"], "runtime.aliases.mine: unknown key; to add a new key write +runtime.aliases.mine=..."),
    (["session.truncation=right"], "session.truncation='right' is not allowed: expected one of error, left"),
    (["generation.min_p=1"], "generation.min_p=1.0 is not allowed: expected null or a number in [0, 1)"),
    (["runtime.device=tpu"], "runtime.device='tpu' is not allowed: expected one of auto, cpu, cuda, mps"),
    (["runtime.dtype=int3"], "runtime.dtype='int3' is not allowed"),
    (["pipeline.until=lunch"], "pipeline.until='lunch' is not allowed"),
    (["dataset.limit=0"], "dataset.limit=0 is not allowed"),
    (["generation=nucleus"], "generation=nucleus: no such option; available: greedy, sampling"),
    (["dataset.path=${nowhere}"], "dataset.path: cannot resolve interpolation"),
    (["generation.temperature=0,1"], "add -m to sweep"),
    (["-m", "generation.temperature=0,-1"], "generation.temperature=-1.0 is not allowed"),
    (["experiment=temperature_sweep"], "use +experiment=temperature_sweep"),
    (["generation.temperature=="], "generation.temperature"),
])
def test_bad_settings_are_refused_in_one_line(overrides, expected):
    message = check_command_line(overrides)
    assert message is not None and expected in message
    assert "\n" not in message


@pytest.mark.parametrize("overrides", [
    ["generation.temperature=0.7", "generation.seed=3", "session.system_prompt=Be brief."],
    ["-m", "generation.temperature=0,0.7,1.5"],
    ["runtime.model=/some/folder", "runtime.batch_size=4", "dataset.path=/some/file.jsonl", "tracking=none"],
    ["hydra.run.dir=somewhere", "generation.stop=[x]"],
])
def test_good_command_lines_pass(overrides):
    assert check_command_line(overrides) is None


def test_range_checks_live_in_the_schema():
    with pytest.raises(ConfigError) as raised:
        GenerationConfig(temperature=-1)
    assert raised.value.key == "generation.temperature"


@pytest.mark.parametrize("args,expected", [
    (["generation.temperature=-1"], "generation.temperature=-1.0 is not allowed"),
    (["+generation.colour=blue"], "generation.colour: unknown key"),
    (["-m", "generation.top_p=0.5,2"], "generation.top_p=2.0 is not allowed"),
    (["runtime.batch_size=many"], "runtime.batch_size"),
])
def test_entry_point_exits_2_with_one_line_and_creates_nothing(tmp_path, args, expected):
    result = run_pipeline(args, cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0, result.stderr
    assert expected in result.stderr and "Traceback" not in result.stderr
    assert list(tmp_path.iterdir()) == [], "nothing may be created for a config error"
