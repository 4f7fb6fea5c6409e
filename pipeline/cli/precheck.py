"""Validate a command line before Hydra runs anything, so a mistake creates nothing.

Hydra composes a run's config only after deciding to run it, and in a sweep only after it has
created the sweep folder. This module composes the same config first, through Hydra's config
loader (the first job of each shape in full, later ones from it: pipeline.cli.job_configs):
every value of every swept key (from `-m a=1,2` or a saved experiment's `hydra.sweeper.params`;
both ends of an Optuna `interval(low, high)`) is composed and converted to the typed schema, so an
unknown key, a wrong type or an out-of-range value in any job is reported as one line before
anything exists. Launchers and sweepers (`hydra/launcher=joblib`, `hydra/sweeper=optuna`) are
Hydra's own config groups: composing checks that the option exists. A user's `--config-dir` is
searched as at run time (pipeline.core.config_search), so its options are checked too.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Optional

from hydra import compose
from hydra._internal.utils import get_args_parser
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import IntervalSweep
from hydra.errors import HydraException, OverrideParseException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError

from pipeline.backends import registry
from pipeline.cli.job_configs import TemplateConfigLoader
from pipeline.core.config import BackendConfig, register, to_config
from pipeline.core.config_search import initialize_configs, user_config_dir
from pipeline.core.errors import UserError, describe_config_exception, first_line


@dataclass
class CommandLineCheck:
    problem: Optional[str] = None  # one line saying why the command line cannot run; None when it can
    first_job: Optional[DictConfig] = None  # the first job's composed config (with its hydra node), once checked


def check_command_line(argv: list[str]) -> Optional[str]:
    """None when every job the command line describes has a valid config, else one line saying why."""
    return check_jobs(argv).problem


def check_jobs(argv: list[str]) -> CommandLineCheck:
    """Check every job the command line describes; keeps the first job's config for the next checks."""
    try:
        args = get_args_parser().parse_args(argv)
    except SystemExit:
        return CommandLineCheck("cannot parse the command line (python -m pipeline --help shows its form)")
    if args.help or args.hydra_help or args.shell_completion or args.info:
        return CommandLineCheck()  # nothing runs: Hydra answers
    try:
        user_config_dir(args.config_dir)
    except UserError as error:
        return CommandLineCheck(str(error))
    parser = OverridesParser.create()
    for raw in args.overrides:
        try:
            parser.parse_override(raw)
        except (OverrideParseException, HydraException) as error:
            return CommandLineCheck(f"{raw}: cannot read this override ({first_line(error)}); write "
                                    "key=value, and quote a value holding brackets, commas or spaces: 'key=\"[a, b\"'")
    try:
        overrides = parser.parse_overrides(args.overrides)
        register()
        with initialize_configs(args.config_dir):
            if not args.multirun and any(o.is_sweep_override() for o in overrides):
                base = compose(config_name=args.config_name or "config", return_hydra_config=True,
                               overrides=[raw for o, raw in zip(overrides, args.overrides) if not o.is_sweep_override()])
                if str(base.hydra.mode) != "RunMode.MULTIRUN":
                    sweep = next(raw for o, raw in zip(overrides, args.overrides) if o.is_sweep_override())
                    return CommandLineCheck(f"{sweep} lists several values: add -m to sweep over them "
                                            "(python -m pipeline -m ...), or quote a value that contains a comma")
            loader = TemplateConfigLoader(GlobalHydra.instance().config_loader())
            config_name = args.config_name or "config"
            first_job = None
            for job in _job_overrides(overrides, args.overrides):
                cfg = loader.load_job(config_name, job)
                registry.check(to_config(cfg))
                if first_job is None:
                    first_job = cfg
                for extra in _saved_sweep_overrides(cfg, parser):
                    registry.check(to_config(loader.load_job(config_name, job + extra)))
    except Exception as error:  # every failure here is a mistake in the command line or the configs
        return CommandLineCheck(_backend_key_problem(error) or describe_config_exception(error))
    return CommandLineCheck(_launcher_problem(first_job), first_job)


def _backend_key_problem(error: BaseException) -> Optional[str]:
    """`backend.<key>=...` for a key the chosen kind's file does not list: which kind has it, or what the chosen one
    takes (each kind's keys are its own: pipeline.backends.registry), rather than Hydra's "add it with +"."""
    while error is not None:
        if isinstance(error, (ConfigKeyError, ConfigAttributeError)) and str(getattr(error, "full_key", "")).startswith(
                "backend."):
            node = getattr(error, "parent_node", None)
            chosen = node.get("name") if isinstance(node, DictConfig) else None
            if isinstance(chosen, str):
                key = error.full_key.removeprefix("backend.").split(".")[0]
                try:
                    registry.settings(BackendConfig(chosen, {key: "?"}))
                except UserError as refused:
                    return str(refused)
            return None
        error = error.__cause__ or error.__context__  # type: ignore[assignment]
    return None


def _launcher_problem(job: Optional[DictConfig]) -> Optional[str]:
    """Our launcher settings that Hydra's schema types but cannot range-check (hydra_plugins.pipeline_launcher)."""
    value = OmegaConf.select(job, "hydra.launcher.points_per_job") if job is not None else None
    if value is not None and value < 1:
        return f"hydra.launcher.points_per_job={value} is not allowed: expected a whole number of 1 or more"
    return None


def _job_overrides(parsed: list, raw: list[str]) -> Iterable[list[str]]:
    """One override list per value of each swept key, the other keys at their first value.

    This composes once per distinct value rather than once per combination: a bad value is
    caught whichever job it would have landed in.
    """
    sweeps = [(i, _values(o)) for i, o in enumerate(parsed)
              if o.is_sweep_override() and not o.is_hydra_override() and _values(o) is not None]
    if not sweeps:
        yield [raw_item for o, raw_item in zip(parsed, raw) if not _is_unlistable_sweep(o)]
        return
    base = {i: f"{o.get_key_element()}={values[0]}" for i, values in sweeps for o in [parsed[i]]}
    for index, values in sweeps:
        for value in values:
            job = []
            for i, (o, raw_item) in enumerate(zip(parsed, raw)):
                if i == index:
                    job.append(f"{o.get_key_element()}={value}")
                elif i in base:
                    job.append(base[i])
                elif not _is_unlistable_sweep(o):
                    job.append(raw_item)
            yield job


def _saved_sweep_overrides(cfg, parser: OverridesParser) -> Iterable[list[str]]:
    """Overrides for each value a saved experiment sweeps over (hydra.sweeper.params)."""
    params = OmegaConf.select(cfg, "hydra.sweeper.params") or {}
    for key, spec in params.items():
        override = parser.parse_override(f"{key}={spec}")
        if override.is_sweep_override() and _values(override) is not None:
            for value in _values(override):
                yield [f"{override.get_key_element()}={value}"]
        elif not override.is_sweep_override():
            yield [f"{key}={spec}"]


def _values(override) -> Optional[list[str]]:
    """The values to check for a sweep: each listed one, or both ends of an interval; None if neither."""
    try:
        return list(override.sweep_string_iterator())
    except Exception:  # an interval sweep (for Optuna) has no finite list of values: check its ends
        value = override.value()
        if isinstance(value, IntervalSweep) and value.start is not None and value.end is not None:
            return [str(value.start), str(value.end)]
        return None


def _is_unlistable_sweep(override) -> bool:
    """A sweep this check cannot expand (over a hydra.* key, or of no known kind): left to Hydra."""
    return override.is_sweep_override() and (override.is_hydra_override() or _values(override) is None)
