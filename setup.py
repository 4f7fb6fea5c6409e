"""Which files the package (the wheel, and `pip install -e .`) is made of; the rest is in pyproject.toml.

conf/ stays at the top of the repository, where users look for it, but an installed package has
to carry it: the wheel holds it as `pipeline/conf` (pipeline.core.config's CONF_DIR finds either).
pyproject.toml cannot map a folder outside the package into it alongside a package search, hence
this file. `hydra_plugins` is a namespace package that Hydra scans for plugins (our launcher,
hydra_plugins/pipeline_launcher), so packages are found as namespaces; the assets (demo models,
datasets) and the configs are package data.
"""

from setuptools import find_namespace_packages, setup

code = find_namespace_packages(include=["pipeline", "pipeline.*", "hydra_plugins", "hydra_plugins.*"],
                               exclude=["*.__pycache__"])
# conf/<group>/ is pipeline/conf/<group>/ once installed: every folder of YAML files, declared (else setuptools warns)
conf = ["pipeline.conf"] + [f"pipeline.conf.{name}" for name in find_namespace_packages(where="conf")]

setup(
    packages=code + conf,
    package_dir={"pipeline.conf": "conf"},  # and its subpackages below it
    package_data={"pipeline": ["assets/**/*"], **{name: ["*.yaml"] for name in conf}},
)
