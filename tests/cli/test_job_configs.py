"""A sweep job's config served from a template (pipeline.cli.job_configs) equals Hydra's full compose."""

import pytest
from hydra import initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.errors import ConfigCompositionException
from hydra.types import RunMode
from omegaconf import OmegaConf

from pipeline.cli.job_configs import TemplateConfigLoader
from pipeline.core.config import CONF_DIR, register


@pytest.fixture
def loaders():
    """(Hydra's own loader, a template loader over it) and a multirun master config."""
    register()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        hydra_loader = GlobalHydra.instance().config_loader()
        master = hydra_loader.load_configuration("config", ["tracking=none", "generation.seed=1,2,3"],
                                                 run_mode=RunMode.MULTIRUN)
        yield hydra_loader, TemplateConfigLoader(hydra_loader), master


def as_yaml(config) -> str:
    return OmegaConf.to_yaml(config)


JOBS = [
    # the usual sweep: plain values of the same keys
    ["tracking=none", "generation.seed=1", "generation.temperature=0.7"],
    ["tracking=none", "generation.seed=2", "generation.temperature=0.7"],
    ["tracking=none", "generation.seed=3", "generation.temperature=0.1"],
    # a list value, and null
    ["tracking=none", "generation.seed=4", "generation.stop=[a,'b c']"],
    ["tracking=none", "generation.seed=5", "generation.top_k=null"],
    ["tracking=none", "generation.seed=5", "generation.top_k=40"],
    # a group choice that differs between jobs: its own template
    ["tracking=mlflow", "generation.seed=6", "generation.temperature=0.7"],
    ["generation=sampling", "generation.seed=7"],
    ["generation=greedy", "generation.seed=7"],
    # additions and a dict value compose in full
    ["tracking=none", "+runtime.aliases.mine=/tmp/model", "generation.seed=8"],
    ["tracking=none", "generation.seed=9", "runtime.aliases={demo: x}"],
]


def test_every_job_config_equals_a_full_compose_and_later_jobs_of_a_shape_skip_composing(loaders, monkeypatch):
    hydra_loader, template_loader, master = loaders
    expected = [as_yaml(hydra_loader.load_sweep_config(master, job)) for job in JOBS]

    composed = []
    original = type(hydra_loader).load_configuration
    monkeypatch.setattr(type(hydra_loader), "load_configuration",
                        lambda self, name, overrides, **kw: composed.append(list(overrides)) or original(
                            self, name, overrides, **kw))
    served = [template_loader.load_sweep_config(master, job) for job in JOBS]

    for job, config, want in zip(JOBS, served, expected):
        assert as_yaml(config) == want, job
    assert OmegaConf.to_container(served[1].hydra.overrides.task) == JOBS[1]
    assert served[1].hydra.job.override_dirname == "generation.seed=2,generation.temperature=0.7,tracking=none"
    # composed in full: the first job of each shape, and what cannot be templated
    assert JOBS[1] not in composed and JOBS[2] not in composed
    assert JOBS[0] in composed and JOBS[3] in composed and JOBS[4] in composed and JOBS[5] not in composed
    assert JOBS[6] in composed and JOBS[7] in composed and JOBS[8] in composed


def test_a_served_config_is_a_copy_launchers_may_change(loaders):
    _, template_loader, master = loaders
    first = template_loader.load_sweep_config(master, JOBS[0])
    first.hydra.job.num = 5  # what a launcher does
    second = template_loader.load_sweep_config(master, JOBS[1])
    assert OmegaConf.is_missing(second.hydra.job, "num") and first.generation.seed == 1 and second.generation.seed == 2


def test_a_bad_value_in_a_later_job_fails_as_a_full_compose_would(loaders):
    hydra_loader, template_loader, master = loaders
    template_loader.load_sweep_config(master, ["tracking=none", "generation.seed=1"])
    for loader in (hydra_loader, template_loader):
        with pytest.raises(ConfigCompositionException, match="generation.seed"):
            loader.load_sweep_config(master, ["tracking=none", "generation.seed=abc"])
