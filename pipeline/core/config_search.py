"""Where configs are found: the project's conf/ and a user's own folder (`--config-dir`).

`python -m pipeline --config-dir DIR` (Hydra's own flag) adds DIR to Hydra's config search path,
after the project's configs, so a user's repository can hold its own experiments, datasets and
runtimes (`DIR/experiment/mine.yaml` is `+experiment=mine`) without touching the installed
package. The checks that compose a command line's config before Hydra runs (pipeline.cli.precheck,
pipeline.run.resume) open Hydra here, over the same search path the run will use, so a user's
option is checked rather than refused as unknown.

This module does not compose anything; it only sets up where Hydra looks.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Iterator, Optional

from hydra import version
from hydra._internal.hydra import Hydra
from hydra._internal.utils import create_config_search_path
from hydra.core.config_search_path import SearchPathQuery
from hydra.initialize import get_gh_backup, restore_gh_from_backup

from pipeline.core.config import CONF_DIR
from pipeline.core.errors import UserError


def user_config_dir(given: Optional[str]) -> Optional[Path]:
    """The absolute `--config-dir` folder (None when not given); a missing folder is refused in one line."""
    if given is None:
        return None
    folder = Path(os.path.abspath(os.path.expanduser(given)))
    if not folder.is_dir():
        raise UserError(f"--config-dir={given}: no such folder ({folder}); give the folder that holds your "
                        "config groups (experiment/, dataset/, runtime/, ...)")
    return folder


@contextlib.contextmanager
def initialize_configs(config_dir: Optional[str] = None) -> Iterator[None]:
    """Hydra initialised over conf/ and `config_dir`, searched in the order `--config-dir` gives at run time
    (as hydra.main does it: after the project's configs, before the structured schemas)."""
    backup = get_gh_backup()
    version.setbase("1.3")
    search_path = create_config_search_path(str(CONF_DIR))
    folder = user_config_dir(config_dir)
    if folder is not None:
        search_path.prepend(provider="command-line", path=f"file://{folder}", anchor=SearchPathQuery(provider="schema"))
    Hydra.create_main_hydra2(task_name="app", config_search_path=search_path)
    try:
        yield
    finally:
        restore_gh_from_backup(backup)
