"""Hydra's basic launcher (jobs one after another in this process, so the model loads once), with
each job's config composed from a template (pipeline.cli.job_configs) instead of from scratch.

Hydra instantiates launchers only from the `hydra_plugins` namespace, so this thin plugin lives
here; conf/config.yaml selects it (`override hydra/launcher: in_process`), and
`hydra/launcher=joblib` or `=slurm` on the command line replace it as before. The sweeper
validates each batch through the same HydraContext before launching it, so the template loader
put there serves both its validation and the launch.
"""

from dataclasses import dataclass

from hydra._internal.core_plugins.basic_launcher import BasicLauncher
from hydra.core.config_store import ConfigStore
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig


@dataclass
class InProcessLauncherConf:
    _target_: str = "hydra_plugins.pipeline_launcher.InProcessLauncher"


ConfigStore.instance().store(group="hydra/launcher", name="in_process", node=InProcessLauncherConf,
                             provider="llm-pipeline")


class InProcessLauncher(BasicLauncher):
    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        from pipeline.cli.job_configs import TemplateConfigLoader

        if not isinstance(hydra_context.config_loader, TemplateConfigLoader):
            hydra_context.config_loader = TemplateConfigLoader(hydra_context.config_loader)
        super().setup(hydra_context=hydra_context, task_function=task_function, config=config)
