"""Each sweep job's config, composed in full once per shape of job rather than once per job.

Hydra composes every job of a sweep from scratch (the defaults list, every YAML file, the merge
onto the schema): about 0.11 s a job here, and the basic sweeper does it twice per job (once to
validate the batch, once to launch it). In a sweep over generation settings the jobs differ only
in plain values (`generation.seed=3`), and Hydra applies such overrides last, with
`OmegaConf.update`, onto a config that does not depend on them. So the first job of each shape
(its overrides, with the values of plain keys left out) is composed by Hydra in full and kept; a
later job of that shape is a copy of it with its own values applied by Hydra's own function, and
the two entries of its hydra node that depend on them (`overrides.task`, `job.override_dirname`)
set as Hydra sets them. tests/test_job_configs.py checks that this equals a full compose. The
command-line check (pipeline.cli.precheck) validates every job of a sweep through `load_job` too.

Anything else composes in full as before: a config group choice (`runtime=cpu`), an addition or
deletion (`+key=`, `~key`), a dict value (Hydra merges those into what is there), a package
override or a hydra.* key.
"""

from __future__ import annotations

import copy
from typing import Hashable, List, Optional

from hydra._internal.config_loader_impl import ConfigLoaderImpl, get_overrides_dirname
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override, OverrideType
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf, open_dict


class TemplateConfigLoader(ConfigLoaderImpl):
    """Hydra's config loader, with `load_sweep_config` served from a per-shape template."""

    def __init__(self, loader: ConfigLoaderImpl) -> None:
        super().__init__(config_search_path=loader.get_search_path())
        self.templates: dict[Hashable, DictConfig] = {}

    def load_sweep_config(self, master_config: DictConfig, sweep_overrides: List[str]) -> DictConfig:
        hydra_overrides = list(OmegaConf.to_container(master_config.hydra.overrides.hydra))
        config = self.load_job(master_config.hydra.job.config_name, hydra_overrides + list(sweep_overrides))
        OmegaConf.copy_cache(from_config=master_config, to_config=config)  # as Hydra's own load_sweep_config
        return config

    def load_job(self, config_name: Optional[str], overrides: List[str]) -> DictConfig:
        """One job's config (hydra node included), as `load_configuration(..., RunMode.RUN)` composes it."""
        parsed = OverridesParser.create(config_loader=self).parse_overrides(overrides)
        # all the config depends on but its plain values: jobs of one shape share a template
        shape = (config_name, tuple(("value", o.key_or_group) if self._plain_value(o) else o.input_line
                                    for o in parsed))
        template = self.templates.get(shape)
        if template is None:
            config = self.load_configuration(config_name, overrides, run_mode=RunMode.RUN)
            self.templates[shape] = copy.deepcopy(config)  # launchers write job numbers into `config`
            return config
        config = copy.deepcopy(template)
        task = [o for o in parsed if not o.is_hydra_override()]
        ConfigLoaderImpl._apply_overrides_to_config([o for o in task if self._plain_value(o)], config)
        with open_dict(config.hydra):
            config.hydra.overrides.task = [o.input_line for o in task]
            naming = config.hydra.job.config.override_dirname
            config.hydra.job.override_dirname = get_overrides_dirname(
                overrides=task, kv_sep=naming.kv_sep, item_sep=naming.item_sep, exclude_keys=naming.exclude_keys)
        return config

    def _plain_value(self, override: Override) -> bool:
        """A `key=value` that Hydra applies with OmegaConf.update after composing: not a config group,
        an addition, a deletion, a package override, a hydra.* key or a dict (which Hydra merges)."""
        return (override.type == OverrideType.CHANGE and override.package is None and not override.is_hydra_override()
                and not override.is_sweep_override() and not isinstance(override.value(), dict)
                and not self.repository.group_exists(override.key_or_group))
