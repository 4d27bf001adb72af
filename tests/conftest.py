"""Shared fixtures.

``synthetic_model(config="tiny", mixture="f16", **kw) -> path`` writes a synthetic
DeepSeek2 GGUF (:func:`minillm.synthetic.write_model`, same keyword arguments) once
per session and argument set, in a pytest temporary directory.
"""
from __future__ import annotations

import pytest

from minillm.synthetic import write_model


def _freeze(value):
    if isinstance(value, dict):
        return tuple(sorted((k, _freeze(v)) for k, v in value.items()))
    if isinstance(value, (list, tuple)):
        return tuple(_freeze(v) for v in value)
    return value


@pytest.fixture(scope="session")
def synthetic_model(tmp_path_factory):
    directory = tmp_path_factory.mktemp("synthetic")
    made: dict = {}

    def make(config="tiny", mixture="f16", **kw) -> str:
        key = (_freeze(config), mixture, _freeze(kw))
        if key not in made:
            name = f"{config if isinstance(config, str) else 'custom'}-{mixture}-{len(made)}.gguf"
            made[key] = write_model(directory / name, config, mixture, **kw)
        return made[key]

    return make


def pytest_report_header(config):
    import minillm_kernels

    return f"minillm kernels: ISA level {minillm_kernels.LEVEL} (supported: {', '.join(minillm_kernels.supported_levels())})"
