"""Command line and experiment runs of the `steering` framework.

The top layer: it builds on `steering` and is the only package that reads the
Hydra configs in ``conf/``. Entry point: the ``steering`` console script
(`experiments.cli.main`).
"""
