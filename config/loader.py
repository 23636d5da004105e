"""Build `Settings` from CLI flags > SPECSERVE_* env > YAML file > defaults, with readable errors."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from config.settings import SECTIONS, Settings

ENV_PREFIX = "SPECSERVE_"


class ConfigError(ValueError):
    """Settings could not be built; the message names the offending field and source."""


def _field_section() -> dict[str, str]:
    return {name: section for section, cls in SECTIONS.items() for name in cls.model_fields}


def read_yaml(path: str | os.PathLike) -> dict[str, dict[str, Any]]:
    """Read a YAML config (flat or grouped by section) into {section: {field: value}}."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file not found: {p}")
    try:
        raw = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {p} is not valid YAML: {e}") from e
    if not isinstance(raw, dict):
        raise ConfigError(f"config file {p} must hold a mapping of settings, got {type(raw).__name__}")
    return group_flat(raw, source=str(p))


def group_flat(values: Mapping[str, Any], source: str) -> dict[str, dict[str, Any]]:
    """Sort flat `field: value` pairs (dashes allowed) and `section: {...}` groups into sections."""
    where = _field_section()
    out: dict[str, dict[str, Any]] = {s: {} for s in SECTIONS}
    for key, value in values.items():
        k = key.replace("-", "_")
        if k in SECTIONS and isinstance(value, dict):
            for sub_key, sub_value in value.items():
                sub = sub_key.replace("-", "_")
                if sub not in SECTIONS[k].model_fields:
                    raise ConfigError(f"{source}: unknown setting {k}.{sub_key}")
                out[k][sub] = sub_value
        elif k in where:
            out[where[k]][k] = value
        else:
            raise ConfigError(f"{source}: unknown setting {key!r}")
    return out


def load_settings(
    cli: Mapping[str, Any] | None = None,
    config_file: str | os.PathLike | None = None,
    environ: Mapping[str, str] | None = None,
) -> Settings:
    """Merge the sources per field and validate. `cli` holds only flags the user actually gave."""
    cli_grouped = group_flat(cli or {}, source="command line")
    yaml_grouped = read_yaml(config_file) if config_file else {s: {} for s in SECTIONS}
    env = dict(os.environ if environ is None else environ)
    sections: dict[str, Any] = {}
    try:
        for name, cls in SECTIONS.items():
            env_values = {f: env[ENV_PREFIX + f.upper()] for f in cls.model_fields if ENV_PREFIX + f.upper() in env}
            merged = {**yaml_grouped[name], **env_values, **cli_grouped[name]}
            sections[name] = cls.model_validate(merged)
        return Settings.model_validate(sections)
    except ValidationError as e:
        raise ConfigError(_readable(e)) from None


def _readable(e: ValidationError) -> str:
    lines = []
    for err in e.errors():
        loc = ".".join(str(x) for x in err["loc"]) or "settings"
        lines.append(f"{loc}: {err['msg']}")
    return "invalid settings: " + "; ".join(lines)
