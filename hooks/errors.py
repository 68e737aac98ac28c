"""Exception types shared by every layer of the framework.

They live in `hooks` (the bottom layer) so that `vectors` and `steering` can
raise and catch the same types without importing upwards.
"""

from __future__ import annotations


class SteeringError(Exception):
    """Base class of every error this framework raises on purpose."""


class LayerError(SteeringError, ValueError):
    """A layer index, layer path or hook site that does not fit the model."""


class ConfigError(SteeringError, ValueError):
    """A setting (run config, server config) whose value cannot work, named with its value."""
