"""The one settings mechanism of every Voltgrid process: flag > environment > YAML file > default.

Each component (operator, gateway, webhook, janitor, GPU slicer) declares only a pydantic-settings
model, a subclass of :class:`LayeredSettings` whose fields document themselves (attribute docstrings);
this module turns it into argparse flags (``--help`` prints each one's environment variable and
default), environment variables (``<prefix><FIELD>``) and an optional YAML file (``--config``, keys as
the field names), with ONE boolean rule (:func:`parse_bool`) and errors that name the setting and where
its bad value came from. Why here: ``voltgrid.api`` is the lowest import-linter layer, the one every
component may import, while none of them may import another.

pydantic-settings layers the sources (:meth:`LayeredSettings.settings_customise_sources`); the sources
are this module's, not its built-in ones, because the flags, the environment and the file of one load
are handed in by the caller (tests pass plain dicts) and a model built directly (``OperatorSettings(...)``)
reads nothing but its arguments.
"""

from __future__ import annotations

import argparse
import contextvars
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, ClassVar, Final, Self

import pydantic
import yaml
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from voltgrid.errors import VoltgridError

#: The one boolean rule (case-insensitive, surrounding blanks ignored); anything else is an error.
BOOL_WORDS: Final = {
    "true": True,
    "1": True,
    "yes": True,
    "on": True,
    "false": False,
    "0": False,
    "no": False,
    "off": False,
}


class SettingsError(VoltgridError):
    """A setting cannot be used as given; the message names the setting and where its value came from."""


def parse_bool(value: object) -> bool:
    """``true/false``, ``1/0``, ``yes/no``, ``on/off`` in any case (and YAML's own booleans); else ValueError."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int | str) and str(value).strip().lower() in BOOL_WORDS:
        return BOOL_WORDS[str(value).strip().lower()]
    raise ValueError(f"{value!r} is not a boolean: use true/false, 1/0, yes/no or on/off")


@dataclass(frozen=True)
class Names:
    """How one field is named outside Python, where it differs from the rule (``--field-name``,
    ``<prefix>FIELD_NAME``); put it in the field's ``Annotated[...]``."""

    #: The flag, e.g. ``--namespace`` for the field ``namespaces``.
    flag: str | None = None
    #: Environment variables, the first one set wins (e.g. ``VOLTGRID_NAMESPACE``, ``POD_NAMESPACE``).
    env: tuple[str, ...] = ()
    #: The flag may repeat, one item each time (a list field).
    repeatable: bool = False
    #: A boolean flag that takes a VALUE (``--x false``) rather than a switch that sets true.
    takes_value: bool = False
    #: Only the YAML file can hold it (mappings of policies).
    file_only: bool = False


@dataclass(frozen=True)
class SettingReference:
    """One setting as ``--help`` and the docs list it."""

    name: str
    flag: str
    env: str
    default: str
    doc: str


@dataclass(frozen=True)
class _Layers:
    """The values of one load, by layer."""

    flags: Mapping[str, Any]
    env: Mapping[str, Any]
    file: Mapping[str, Any]


_LOADING: contextvars.ContextVar[_Layers | None] = contextvars.ContextVar("voltgrid_settings_layers", default=None)


class _LayerSource(PydanticBaseSettingsSource):
    """One layer of the load in progress (empty when a model is built directly)."""

    def __init__(self, settings_cls: type[BaseSettings], layer: str) -> None:
        super().__init__(settings_cls)
        self.layer = layer

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False  # __call__ returns the whole layer at once

    def __call__(self) -> dict[str, Any]:
        layers = _LOADING.get()
        return dict(getattr(layers, self.layer)) if layers is not None else {}


def _unwrap(annotation: Any) -> tuple[Any, bool]:
    """(the type inside ``Annotated``/``X | None``, whether None is allowed)."""
    while typing.get_origin(annotation) is typing.Annotated:
        annotation = typing.get_args(annotation)[0]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return (args[0] if len(args) == 1 else annotation), True
    return annotation, False


class LayeredSettings(BaseSettings):
    """Base of each component's settings model; set ``env_prefix`` in ``model_config``."""

    model_config = SettingsConfigDict(extra="forbid", use_attribute_docstrings=True)

    #: A YAML file read when ``--config`` and ``<prefix>CONFIG`` name none, if it exists.
    default_config_file: ClassVar[Path | None] = None
    #: The error :meth:`load` raises (a component may name its own subclass).
    error: ClassVar[type[SettingsError]] = SettingsError

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Precedence: arguments and flags > environment > file > the field's default."""
        return (
            init_settings,
            _LayerSource(settings_cls, "flags"),
            _LayerSource(settings_cls, "env"),
            _LayerSource(settings_cls, "file"),
        )

    @pydantic.field_validator("*", mode="before")
    @classmethod
    def _one_text_rule(cls, value: Any, info: pydantic.ValidationInfo) -> Any:
        """Text from a flag or the environment: booleans by :func:`parse_bool`, lists comma-separated,
        empty text for an optional setting means none. Integers are not booleans."""
        if info.field_name is None:
            return value
        kind, optional = _unwrap(cls.model_fields[info.field_name].annotation)
        if kind is bool and value is not None:
            return parse_bool(value)
        if kind is int and isinstance(value, bool):
            raise ValueError(f"{value!r} is not an integer")
        if not isinstance(value, str):
            return value
        if optional and not value.strip():
            return None
        if typing.get_origin(kind) in (list, tuple, frozenset, set):
            return [item.strip() for item in value.split(",") if item.strip()]
        return value

    # -- names ------------------------------------------------------------------------------------

    @classmethod
    def _names(cls, name: str) -> Names:
        return next((m for m in cls.model_fields[name].metadata if isinstance(m, Names)), Names())

    @classmethod
    def flag_of(cls, name: str) -> str:
        names = cls._names(name)
        return "" if names.file_only else names.flag or "--" + name.replace("_", "-")

    @classmethod
    def envs_of(cls, name: str) -> tuple[str, ...]:
        names = cls._names(name)
        if names.file_only:
            return ()
        return names.env or (str(cls.model_config.get("env_prefix", "")) + name.upper(),)

    @classmethod
    def config_env(cls) -> str:
        return str(cls.model_config.get("env_prefix", "")) + "CONFIG"

    @classmethod
    def reference(cls) -> list[SettingReference]:
        """Every setting with its flag, environment variable(s), default and documentation."""
        return [
            SettingReference(name, cls.flag_of(name), ", ".join(cls.envs_of(name)), _show(f), f.description or "")
            for name, f in cls.model_fields.items()
        ]

    # -- flags ------------------------------------------------------------------------------------

    @classmethod
    def add_arguments(
        cls, parser: argparse.ArgumentParser | argparse._ArgumentGroup, *, dest_prefix: str = "", config: bool = True
    ) -> None:
        """One flag per setting (unset: None) with ``[env ...; default ...]`` in its help; ``--config``."""
        if config:
            default = f"; default {cls.default_config_file} if it exists" if cls.default_config_file else ""
            parser.add_argument(
                "--config", type=Path, default=None, help=f"YAML settings file [env {cls.config_env()}{default}]"
            )
        for ref in cls.reference():
            if not ref.flag:
                continue
            names = cls._names(ref.name)
            kind, _ = _unwrap(cls.model_fields[ref.name].annotation)
            text = f"{ref.doc} [env {ref.env}; default {ref.default or 'none'}]".replace("%", "%%")
            dest = dest_prefix + ref.name
            if kind is bool and not names.takes_value:
                parser.add_argument(ref.flag, dest=dest, action="store_const", const=True, default=None, help=text)
            elif names.repeatable:
                parser.add_argument(ref.flag, dest=dest, action="append", metavar="VALUE", default=None, help=text)
            else:
                parser.add_argument(ref.flag, dest=dest, metavar="VALUE", default=None, help=text)

    @classmethod
    def flags_from(cls, args: argparse.Namespace, dest_prefix: str = "") -> dict[str, Any]:
        """The settings given as flags in ``args`` (those :meth:`add_arguments` added and were set)."""
        given = vars(args)
        return {n: given[dest_prefix + n] for n in cls.model_fields if given.get(dest_prefix + n) is not None}

    @classmethod
    def parse(cls, argv: Sequence[str] | None, env: Mapping[str, str], *, prog: str, description: str) -> Self:
        """A component's whole command line: its settings' flags and ``--config``, then :meth:`load`."""
        parser = argparse.ArgumentParser(prog=prog, description=description)
        cls.add_arguments(parser)
        args = parser.parse_args(argv)
        return cls.load(config=args.config, env=env, flags=cls.flags_from(args))

    # -- load -------------------------------------------------------------------------------------

    @classmethod
    def load(
        cls,
        *,
        config: Path | None = None,
        env: Mapping[str, str] | None = None,
        flags: Mapping[str, Any] | None = None,
        defaults: Mapping[str, Any] | None = None,
    ) -> Self:
        """Flags (None: unset) over ``env`` over the YAML ``config`` file (else ``<prefix>CONFIG``, else
        :attr:`default_config_file` if present) over ``defaults`` over the fields' defaults."""
        env = env or {}
        origin: dict[str, str] = {}
        file_values = dict(defaults or {})
        origin.update(dict.fromkeys(file_values, "default"))
        path = config or (Path(env[cls.config_env()]) if env.get(cls.config_env()) else None)
        if path is None and cls.default_config_file is not None and cls.default_config_file.exists():
            path = cls.default_config_file
        if path is not None:
            for name, value in cls._read_file(path).items():
                file_values[name], origin[name] = value, f"config file {path} key {name}"
        env_values: dict[str, str] = {}
        for name in cls.model_fields:
            for var in cls.envs_of(name):
                if var in env:
                    env_values[name], origin[name] = env[var], f"{var}={env[var]!r}"
                    break
        flag_values = {name: value for name, value in (flags or {}).items() if value is not None}
        for name, value in flag_values.items():
            origin[name] = f"{cls.flag_of(name) or name} {value!r}"
        token = _LOADING.set(_Layers(flag_values, env_values, file_values))
        try:
            return cls()
        except pydantic.ValidationError as exc:
            raise cls.error(_describe(exc, origin)) from None
        finally:
            _LOADING.reset(token)

    @classmethod
    def _read_file(cls, path: Path) -> dict[str, Any]:
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise cls.error(f"cannot read config file {path}: {exc}") from None
        if not isinstance(data, dict):
            raise cls.error(f"config file {path} must be a mapping of setting names to values")
        values = {str(key).replace("-", "_"): value for key, value in data.items()}
        unknown = sorted(set(values) - set(cls.model_fields))
        if unknown:
            raise cls.error(f"config file {path}: unknown setting {', '.join(unknown)}")
        return values


def _describe(exc: pydantic.ValidationError, origin: Mapping[str, str]) -> str:
    """One line per bad setting: ``name (where it came from): what is wrong``."""
    lines = []
    for error in exc.errors():
        name = str(error["loc"][0]) if error["loc"] else "settings"
        where = f" ({origin[name]})" if name in origin else ""
        path = ".".join(str(p) for p in error["loc"][1:])
        message = str(error["msg"]).removeprefix("Value error, ")
        lines.append(f"setting {name}{where}{': ' + path if path else ''}: {message}")
    return "; ".join(lines)


def _show(field: FieldInfo) -> str:
    """A default as ``--help`` and the docs print it ("" for none)."""
    value = field.get_default(call_default_factory=True)
    if value is None or value in ({}, (), [], frozenset()):
        return ""
    if isinstance(value, list | tuple | frozenset | set):
        return ",".join(map(str, value))
    if isinstance(value, timedelta):
        return _go_duration(value)
    return str(value)


def _go_duration(value: timedelta) -> str:
    seconds = int(value.total_seconds())
    for unit, size in (("h", 3600), ("m", 60)):
        if seconds and seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"
