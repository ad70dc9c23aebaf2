"""Typed project configuration: ``headrace.toml`` in, an immutable :class:`ResolvedConfig` out.

A project is a folder holding ``headrace.toml``. Every setting has a default, so a file with
nothing but ``name = "demo"`` (or even an empty file) is a valid project::

    name = "demo"                 # project name (default: folder name)
    default_profile = "dev"       # profile used when none is given (optional)
    lake = "lake"                 # lake root; relative paths resolve against the project folder
    state = "sqlite:///.headrace/state.db"   # or postgresql://user:pass@host/db ; relative sqlite paths resolve against the project folder
    engine = "duckdb"             # duckdb (embedded, default) | spark (pip install 'headrace[spark]')
    pipelines = "pipelines"       # folder of Python definitions
    models = "models"             # folder of SQL models

    [run]
    workers = 4                   # tables run in parallel (>=1)
    retries = 2                   # extra attempts for transient errors (>=0)
    backoff_seconds = 1.0         # first retry delay; doubles each attempt, with full jitter
    max_backoff_seconds = 30.0
    lock_timeout_seconds = 600.0  # wait for another run writing the same table

    [write]
    compression = "zstd"          # zstd | snappy | gzip | lz4 | none
    compression_level = 3         # optional
    target_file_size = "128MB"    # bytes as int or a string with KB/MB/GB (1024-based), > 0

    [duckdb]
    memory_limit = "4GB"          # optional, passed to DuckDB as-is (validate the form number+unit)
    threads = 2                   # optional, >=1
    temp_directory = ".headrace/tmp"   # spill folder; relative to project

    [spark]                       # used when engine = "spark"
    master = "local[*]"           # local[N], spark://host:7077, yarn, k8s://https://...
    remote = "sc://host:15002"    # optional: a Spark Connect server instead of a master
    app_name = "headrace"
    start_timeout_seconds = 120   # bounded wait for the application to get executors
    optimize_write = true         # size files to [write] target_file_size (a shuffle before the write)
    local_threshold = "64MB"      # smaller inputs of a contract or SCD2 publish run on the driver's DuckDB; 0 = never
    [spark.conf]                  # any Spark setting, passed as-is
    "spark.executor.memory" = "8g"

    [schedules.daily]             # a named pipeline schedule for `headrace serve` (any number)
    cron = "0 6 * * *"            # 5-field cron (or @hourly/@daily/...), checked with croniter
    select = ["+gold.daily_revenue"]   # --select expressions; default: every table
    catchup = "skip"              # skip (run only the latest missed interval) | all (each, in order)
    timezone = "UTC"              # IANA zone the cron and deadline are read in
    max_duration = "30m"          # SLA (optional): a run longer than this raises sla_missed
    deadline = "07:30"            # SLA (optional): no successful run by this local time -> sla_missed
    enabled = true                # a profile can switch a schedule off (TOML cannot delete one)

    [alerts]                      # where failures and SLA misses are sent (optional)
    webhook = "${SLACK_WEBHOOK_URL:-}"   # JSON POST; Slack-compatible "text" plus structured fields
    command = "notify-send headrace"     # shell command; JSON payload on stdin, HEADRACE_ALERT_* env
    on = ["run_failed", "check_failed", "quarantine_breaker", "sla_missed"]   # default: all
    retries = 3                   # delivery retries, exponential backoff
    timeout_seconds = 10

    [lineage]                     # OpenLineage events per run and table (optional)
    url = "http://marquez:5000"   # POST {url}/{endpoint}; and/or file = "lineage.ndjson" (JSON lines)
    endpoint = "api/v1/lineage"
    api_key = "${OPENLINEAGE_API_KEY:-}"   # sent as a Bearer token
    namespace = "analytics"       # job namespace (default: the project name)
    timeout_seconds = 5           # per delivery; a failed delivery never fails a run

    [profiles.dev]
    lake = "lake"

    [profiles.prod]
    lake = "/data/lake"
    state = "${HEADRACE_STATE_URL}"
    [profiles.prod.run]
    workers = 8

How a value is chosen, lowest to highest precedence: built-in default, the top level of
``headrace.toml``, the selected profile (deep-merged key by key, so ``[profiles.prod.run]``
changes only the run keys it names, and ``[profiles.prod.schedules.daily]`` only the keys of
that schedule it names), then ``overrides`` (explicit CLI values such as
``{"run.workers": 2}``). A profile may set anything except ``name``, ``default_profile`` and
``profiles``. The profile is the ``profile`` argument, else ``$HEADRACE_PROFILE``, else
``default_profile``, else none (top level only).

String values may use ``${VAR}`` or ``${VAR:-default}`` (the default also applies when VAR is
set but empty, as in the shell); ``$${`` is a literal ``${``. Interpolation runs after the
merge and only on values that are actually used, so the ``prod`` profile can reference a
secret that is not exported on a laptop running ``dev``. Overrides are never interpolated:
the shell already expanded them.

Validation is strict because a misspelt key silently falling back to a default is the worst
kind of config bug: unknown keys are errors in every table, including profiles that are not
selected, and every profile is type-checked (except values that still hold ``${...}``).
Errors are :class:`~headrace.errors.ProjectError` with the file, the line where it can be
found, the dotted key and a hint; pydantic's own wording never reaches the user.

Notes on the resolved values: ``compression_level`` is dropped (``None``) for codecs without
levels (snappy, lz4, none), because TOML cannot unset a key and a profile switching codec
must not inherit an inapplicable level. ``memory_limit`` uses DuckDB's units, where ``GB``
is 1000-based; ``target_file_size`` is 1024-based. ``[alerts]`` resolves to ``None`` when it
sets neither a webhook nor a command after interpolation, so ``webhook = "${SLACK_WEBHOOK_URL:-}"``
switches alerts off on a machine without the variable (a bare ``${SLACK_WEBHOOK_URL}`` is an error
there, like any other unset variable). ``max_duration`` is a ``timedelta`` and ``deadline`` a
``datetime.time``; schedule names are letters, digits, ``_`` and ``-``.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import time, timedelta
from pathlib import Path
from types import MappingProxyType
from typing import Annotated, Any, Literal, get_args

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
)

from headrace.errors import ProjectError
from headrace.spec._durations import duration_seconds
from headrace.spec._names import did_you_mean

CONFIG_FILE = "headrace.toml"
PROFILE_ENV = "HEADRACE_PROFILE"

# An engine name here (and in engines/registry.py) is accepted everywhere.
Engine = Literal["duckdb", "spark"]
Compression = Literal["zstd", "snappy", "gzip", "lz4", "none"]
CatchUp = Literal["skip", "all"]
AlertKind = Literal["run_failed", "check_failed", "quarantine_breaker", "sla_missed"]
ENGINES: tuple[str, ...] = get_args(Engine)
COMPRESSIONS: tuple[str, ...] = get_args(Compression)
CATCHUPS: tuple[str, ...] = get_args(CatchUp)
ALERT_KINDS: tuple[AlertKind, ...] = get_args(AlertKind)
# Level ranges the Delta writer accepts; other codecs have no level.
_LEVELS: dict[str, tuple[int, int]] = {"zstd": (1, 22), "gzip": (1, 9)}

_SIZE_UNITS = {"": 1, "b": 1, "kb": 1024, "mb": 1024**2, "gb": 1024**3, "tb": 1024**4}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]i?b|b)?\s*$", re.IGNORECASE)
_MEMORY = re.compile(
    r"^\s*\d+(?:\.\d+)?\s*(?:%|[kmgt]i?b|[kmgt]|b|bytes|(?:kilo|mega|giga|tera)bytes)\s*$",
    re.IGNORECASE,
)
_URL_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*)://")
_SQLITE_URL = re.compile(r"^(sqlite(?:\+[\w.]+)?)://(.*)$", re.IGNORECASE | re.DOTALL)
_SCHEDULE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_\-]*$")
_CLOCK = re.compile(r"^\s*(\d{1,2}):(\d{2})(?::(\d{2}))?\s*$")
_CRON_ALIASES = ("@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly")
_REF = re.compile(r"\$\$\{|\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?::-(?P<default>[^}]*))?\}|\$\{")


_REQUIRED: Any = object()  # _describe's "no default" marker


class _Invalid(ValueError):
    """A validator's complaint already phrased for users, with an optional hint."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.hint = hint


# --------------------------------------------------------------------------- field checks


def _no_bool(value: Any) -> Any:
    """Reject booleans, which pydantic would otherwise accept as 0/1 for counts."""
    if isinstance(value, bool):
        raise ValueError("a boolean is not a number")
    return value


def _choice(kind: str, choices: tuple[str, ...]) -> Callable[[Any], Any]:
    """Build a case-insensitive membership check that suggests the closest valid choice."""

    def check(value: Any) -> Any:
        if not isinstance(value, str):
            return value  # the Literal type reports the wrong type
        lowered = value.strip().lower()
        if lowered in choices:
            return lowered
        raise _Invalid(
            f"Unknown {kind} {value!r}.{did_you_mean(lowered, choices)}",
            hint=f"valid values: {', '.join(choices)}",
        )

    return check


def parse_size(value: Any) -> int:
    """Bytes from an int or a string like ``"128MB"`` (1024-based; KB/MB/GB/TB, KiB also accepted)."""
    if isinstance(value, int) and not isinstance(value, bool):
        size = value
    elif isinstance(value, str) and (match := _SIZE.match(value)):
        unit = (match[2] or "").lower().replace("i", "")
        size = int(float(match[1]) * _SIZE_UNITS[unit])
    else:
        raise ValueError("not a size")
    if size <= 0:
        raise ValueError("size must be > 0")
    return size


def parse_size_or_zero(value: Any) -> int:
    """:func:`parse_size`, where ``0`` means "none"."""
    if value == 0 or value == "0":
        return 0
    return parse_size(value)


def parse_duration(value: Any) -> timedelta:
    """A ``timedelta`` from seconds (int/float) or a string like ``"30m"``, ``"1h30m"``, ``"90s"``.

    Units: ms, s, m, h, d. The duration must be > 0.
    """
    if isinstance(value, timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    elif isinstance(value, str) and (parsed := duration_seconds(value)) is not None:
        seconds = parsed
    else:
        raise _Invalid(
            f"{value!r} is not a duration",
            hint="write a number of seconds or a string such as '90s', '30m', '2h' or '1h30m'",
        )
    if not seconds > 0 or seconds == float("inf"):
        raise _Invalid(f"{value!r} is not a positive duration", hint="a duration must be > 0")
    return timedelta(seconds=seconds)


def _parse_clock(value: Any) -> Any:
    """``"07:30"`` / ``"07:30:15"`` (or a TOML local time) -> ``datetime.time``."""
    if isinstance(value, time):
        if value.tzinfo is not None:
            raise _Invalid(
                f"{value} has a UTC offset",
                hint="write a local time such as '07:30'; the schedule's timezone applies",
            )
        return value
    match = _CLOCK.match(value) if isinstance(value, str) else None
    if match:
        hour, minute, second = int(match[1]), int(match[2]), int(match[3] or 0)
        if hour < 24 and minute < 60 and second < 60:
            return time(hour, minute, second)
    raise _Invalid(
        f"{value!r} is not a time of day",
        hint="write HH:MM (24-hour clock), e.g. '07:30', read in the schedule's timezone",
    )


def _one_or_many(value: Any) -> Any:
    """Accept a single string where a list of strings is expected."""
    return [value] if isinstance(value, str) else value


Count = Annotated[int, BeforeValidator(_no_bool)]
Seconds = Annotated[float, BeforeValidator(_no_bool), Field(ge=0, allow_inf_nan=False)]
PositiveCount = Annotated[int, BeforeValidator(_no_bool), Field(ge=1)]


class _Section(BaseModel):
    """Strict, immutable base: an unknown key is an error, never a silent default."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class RunConfig(_Section):
    """``[run]``: parallelism, retries and lock waiting for ``headrace run``."""

    workers: PositiveCount = Field(4, description="an integer >= 1")
    retries: Annotated[Count, Field(ge=0)] = Field(2, description="an integer >= 0")
    backoff_seconds: Seconds = Field(1.0, description="a number of seconds >= 0")
    max_backoff_seconds: Seconds = Field(30.0, description="a number of seconds >= 0")
    lock_timeout_seconds: Seconds = Field(600.0, description="a number of seconds >= 0")

    @field_validator("max_backoff_seconds")
    @classmethod
    def _cap_not_below_first_delay(cls, value: float, info: ValidationInfo) -> float:
        """A cap below the first delay would make the doubling schedule meaningless."""
        first = info.data.get("backoff_seconds")
        if first is not None and value < first:
            raise _Invalid(
                f"{value} is smaller than run.backoff_seconds ({first})",
                hint="max_backoff_seconds caps the doubling delay, so it must be >= backoff_seconds",
            )
        return value


class WriteConfig(_Section):
    """``[write]``: how Delta data files are written."""

    compression: Annotated[Compression, BeforeValidator(_choice("compression", COMPRESSIONS))] = (
        Field("zstd", description=f"one of {', '.join(COMPRESSIONS)}")
    )
    compression_level: Count | None = Field(None, description="an integer")
    target_file_size: Annotated[int, BeforeValidator(parse_size)] = Field(
        128 * 1024**2, description="a size > 0 in bytes, or a string like '128MB' (KB/MB/GB)"
    )

    @field_validator("compression_level")
    @classmethod
    def _level_fits_codec(cls, value: int | None, info: ValidationInfo) -> int | None:
        """Drop levels for codecs without one; range-check the rest so the writer never fails."""
        codec = info.data.get("compression")
        if value is None or codec is None:
            return value
        if codec not in _LEVELS:
            return None
        low, high = _LEVELS[codec]
        if not low <= value <= high:
            raise _Invalid(
                f"{value} is out of range for {codec} ({low}..{high})",
                hint=f"{codec} levels go from {low} (fast) to {high} (small)",
            )
        return value


class DuckDBConfig(_Section):
    """``[duckdb]``: engine resources. ``temp_directory`` is absolute once resolved."""

    memory_limit: str | None = Field(None, description="a size such as '4GB', '512MB' or '80%'")
    threads: PositiveCount | None = Field(None, description="an integer >= 1")
    temp_directory: Path = Field(Path(".headrace/tmp"), description="a folder path")

    @field_validator("memory_limit")
    @classmethod
    def _memory_form(cls, value: str | None) -> str | None:
        """DuckDB only reports a bad limit when the engine starts; catch it at load time."""
        if value is not None and not _MEMORY.match(value):
            raise _Invalid(
                f"{value!r} is not a memory size",
                hint="write a number and a unit, e.g. '4GB', '512MB', '2GiB' or '80%'",
            )
        return value.strip() if value is not None else None


class SparkConfig(_Section):
    """``[spark]``: where the Spark engine runs; ``[spark.conf]`` passes any Spark setting."""

    master: str = Field("local[*]", min_length=1,
                        description="a Spark master URL such as 'local[*]', 'spark://host:7077' or 'yarn'")
    remote: str | None = Field(None, description="a Spark Connect URL such as 'sc://host:15002'")
    app_name: str = Field("headrace", min_length=1, description="a non-empty string")
    start_timeout_seconds: Seconds = Field(120.0, description="a number of seconds >= 0")
    optimize_write: bool = Field(True, description="true or false")
    local_threshold: Annotated[int, BeforeValidator(parse_size_or_zero)] = Field(
        64 * 1024**2, description="a size in bytes, or a string like '64MB' (KB/MB/GB); 0 for never"
    )
    conf: dict[str, str] = Field(default_factory=dict, description="a table of Spark settings")

    @field_validator("conf", mode="before")
    @classmethod
    def _conf_text(cls, value: Any) -> Any:
        """Spark settings are strings; TOML numbers and booleans are written the way Spark reads them."""
        if isinstance(value, dict):
            return {str(k): (str(v).lower() if isinstance(v, bool) else str(v)) for k, v in value.items()}
        return value

    @field_validator("remote")
    @classmethod
    def _connect_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith("sc://"):
            raise _Invalid(f"{value!r} is not a Spark Connect URL", hint="write sc://host:15002")
        return value


class ScheduleConfig(_Section):
    """``[schedules.NAME]``: when ``headrace serve`` runs a selection, and its SLAs.

    ``cron`` fire times are read in ``timezone``; each fire time is one *interval*. ``deadline``
    is a local time on the interval's day (the next day when it is not after the fire time).
    """

    cron: str = Field(description="a cron expression such as '0 6 * * *' (or @hourly, @daily, ...)")
    select: Annotated[tuple[str, ...], BeforeValidator(_one_or_many)] = Field(
        (), description="a list of --select expressions such as ['+gold.daily']"
    )
    catchup: Annotated[CatchUp, BeforeValidator(_choice("catchup policy", CATCHUPS))] = Field(
        "skip", description=f"one of {', '.join(CATCHUPS)}"
    )
    timezone: str = Field("UTC", description="an IANA time zone name such as 'Europe/Paris'")
    max_duration: Annotated[timedelta | None, BeforeValidator(
        lambda v: None if v is None else parse_duration(v)
    )] = Field(None, description="a duration such as '30m', '2h' or '90s'")
    deadline: Annotated[time | None, BeforeValidator(
        lambda v: None if v is None else _parse_clock(v)
    )] = Field(None, description="a local time of day such as '07:30'")
    enabled: bool = Field(True, description="true or false")

    @field_validator("cron")
    @classmethod
    def _valid_cron(cls, value: str) -> str:
        """croniter accepts seconds/years fields too; Airflow and crontab use five fields."""
        from croniter import croniter

        text = " ".join(value.split())
        fields = text.split(" ")
        ok = text.lower() in _CRON_ALIASES or (len(fields) == 5 and croniter.is_valid(text))
        if not ok:
            raise _Invalid(
                f"{value!r} is not a valid cron expression",
                hint="five fields: minute hour day-of-month month day-of-week, e.g. '0 6 * * *' "
                "for 06:00 daily; or one of " + ", ".join(_CRON_ALIASES),
            )
        return text.lower() if text.startswith("@") else text

    @field_validator("select")
    @classmethod
    def _non_empty_terms(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if any(not term.strip() for term in value):
            raise _Invalid("an empty selection expression", hint="leave select out to run every table")
        return tuple(term.strip() for term in value)

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise _Invalid(
                f"unknown time zone {value!r}.{did_you_mean(value, sorted(available_timezones()))}",
                hint="use an IANA name such as 'UTC', 'Europe/Paris' or 'America/New_York'",
            ) from None
        return value

    @property
    def tz(self) -> Any:
        """The ``zoneinfo.ZoneInfo`` for :attr:`timezone`."""
        from zoneinfo import ZoneInfo

        return ZoneInfo(self.timezone)


def _alert_kinds(value: Any) -> Any:
    """A list of alert kinds, each checked with a did-you-mean; a single string is accepted."""
    value = _one_or_many(value)
    if not isinstance(value, list | tuple):
        return value
    check = _choice("alert kind", ALERT_KINDS)
    return tuple(dict.fromkeys(check(item) for item in value))


def _optional_http_url(value: str | None, *, shown: Callable[[str], str], hint: str) -> str | None:
    """An http(s) URL, or None for an empty one (an unset ``${VAR:-}`` switches it off)."""
    if value is None or not value.strip():
        return None
    value = value.strip()
    if not re.match(r"^https?://[^/\s]+", value, re.IGNORECASE):
        raise _Invalid(f"{shown(value)!r} is not an http(s) URL", hint=hint)
    return value


class AlertsConfig(_Section):
    """``[alerts]``: where run failures, failed checks, breakers and SLA misses are sent."""

    webhook: str | None = Field(None, description="an http:// or https:// URL")
    command: str | None = Field(None, description="a shell command")
    on: Annotated[tuple[AlertKind, ...], BeforeValidator(_alert_kinds)] = Field(
        ALERT_KINDS, description=f"a list of alert kinds ({', '.join(ALERT_KINDS)})"
    )
    retries: Annotated[Count, Field(ge=0)] = Field(3, description="an integer >= 0")
    timeout_seconds: Annotated[float, BeforeValidator(_no_bool), Field(gt=0, allow_inf_nan=False)] = (
        Field(10.0, description="a number of seconds > 0")
    )

    @field_validator("webhook")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        """Empty (e.g. ``${SLACK_WEBHOOK_URL:-}`` unset) means "no webhook"."""
        return _optional_http_url(value, shown=_mask_webhook,
                                  hint="write the full URL, e.g. 'https://hooks.slack.com/services/...'")

    @field_validator("command")
    @classmethod
    def _command(cls, value: str | None) -> str | None:
        return value if value is not None and value.strip() else None

    @property
    def enabled(self) -> bool:
        """True when there is somewhere to deliver to."""
        return bool(self.webhook or self.command)


class LineageConfig(_Section):
    """``[lineage]``: where OpenLineage events of every run and table are sent."""

    url: str | None = Field(None, description="an http:// or https:// URL")
    endpoint: str = Field("api/v1/lineage", description="a path under url")
    api_key: str | None = Field(None, description="a token, sent as a Bearer token")
    file: str | None = Field(None, description="a file path (JSON lines)")
    namespace: str | None = Field(None, description="a job namespace (default: the project name)")
    timeout_seconds: Annotated[float, BeforeValidator(_no_bool), Field(gt=0, allow_inf_nan=False)] = (
        Field(5.0, description="a number of seconds > 0")
    )

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        """Empty (e.g. ``${OPENLINEAGE_URL:-}`` unset) means "no HTTP endpoint"."""
        url = _optional_http_url(value, shown=str, hint="write the server's URL, e.g. 'http://marquez:5000'")
        return url.rstrip("/") if url else None

    @field_validator("file", "api_key", "namespace")
    @classmethod
    def _empty_is_none(cls, value: str | None) -> str | None:
        return value.strip() if value is not None and value.strip() else None

    @property
    def enabled(self) -> bool:
        return bool(self.url or self.file)


class _Settings(_Section):
    """Every setting after the profile merge; validated once values are interpolated."""

    name: str = Field("project", min_length=1, description="a non-empty string")
    lake: str = Field("lake", min_length=1, description="a folder path")
    state: str = Field(
        "sqlite:///.headrace/state.db",
        description="a sqlite:/// or postgresql:// URL",
    )
    engine: Annotated[Engine, BeforeValidator(_choice("engine", ENGINES))] = Field(
        "duckdb", description=f"one of {', '.join(ENGINES)}"
    )
    pipelines: str = Field("pipelines", min_length=1, description="a folder path")
    models: str = Field("models", min_length=1, description="a folder path")
    run: RunConfig = Field(default_factory=RunConfig, description="a table")
    write: WriteConfig = Field(default_factory=WriteConfig, description="a table")
    duckdb: DuckDBConfig = Field(default_factory=DuckDBConfig, description="a table")
    spark: SparkConfig = Field(default_factory=SparkConfig, description="a table")
    alerts: AlertsConfig | None = Field(None, description="a table")
    lineage: LineageConfig | None = Field(None, description="a table")
    schedules: dict[str, ScheduleConfig] = Field(
        default_factory=dict, description="a table of [schedules.NAME] tables"
    )

    @field_validator("lake")
    @classmethod
    def _local_lake(cls, value: str) -> str:
        """The lake root becomes a ``Path``; a URL would be mangled into a relative folder."""
        if _URL_SCHEME.match(value):
            raise _Invalid(
                f"{value!r} is a URL; only local folders are supported for now",
                hint="use a local or mounted path such as '/data/lake'",
            )
        return value

    @field_validator("state")
    @classmethod
    def _state_url(cls, value: str) -> str:
        """Accept only stores the state layer can open, so a typo fails before any run."""
        match = _URL_SCHEME.match(value)
        example = "sqlite:///.headrace/state.db or postgresql://user:pass@host/db"
        if not match:
            raise _Invalid(f"{_mask(value)!r} is not a database URL", hint=f"use {example}")
        dialect = match[1].split("+")[0].lower()
        if dialect == "postgres":
            raise _Invalid("'postgres://' is not supported", hint="write postgresql:// instead")
        if dialect not in ("sqlite", "postgresql"):
            raise _Invalid(
                f"unsupported database {dialect!r}.{did_you_mean(dialect, ['sqlite', 'postgresql'])}",
                hint=f"use {example}",
            )
        rest = value[match.end() :]
        if dialect == "sqlite" and rest and not rest.startswith("/"):
            raise _Invalid(
                f"{value!r} has a host part; sqlite URLs use three slashes",
                hint="write sqlite:///relative/state.db or sqlite:////absolute/state.db",
            )
        return value


_SECTIONS: dict[str, type[_Section]] = {
    "run": RunConfig,
    "write": WriteConfig,
    "duckdb": DuckDBConfig,
    "spark": SparkConfig,
    "alerts": AlertsConfig,
    "lineage": LineageConfig,
}
# Section keys that are free-form tables of settings ([spark.conf]).
_SUBTABLES = {("spark", "conf")}
# Sections that are tables of named tables ([schedules.NAME]); flat keys are "schedules.NAME.key".
_NAMED: dict[str, type[_Section]] = {"schedules": ScheduleConfig}
_SCALARS = ("lake", "state", "engine", "pipelines", "models")
_FILE_ONLY = ("name", "default_profile", "profiles")
_TOP_KEYS = (*_FILE_ONLY, *_SCALARS, *_SECTIONS, *_NAMED)
_PROFILE_KEYS = (*_SCALARS, *_SECTIONS, *_NAMED)
_SETTING_KEYS = (
    "name",
    *_SCALARS,
    *(f"{section}.{key}" for section, model in _SECTIONS.items() for key in model.model_fields),
)


# --------------------------------------------------------------------------- result


@dataclass(frozen=True, slots=True)
class ResolvedConfig:
    """The project's settings with every path absolute and every value typed.

    ``origins`` maps dotted keys (as in ``headrace.toml``) to where the value came from;
    keys missing from it are defaults. :meth:`explain` renders both for ``headrace config``.
    """

    root: Path
    name: str
    profile: str | None
    lake_root: Path
    state_url: str
    engine: Engine
    pipelines_dir: Path
    models_dir: Path
    run: RunConfig = field(default_factory=RunConfig)
    write: WriteConfig = field(default_factory=WriteConfig)
    duckdb: DuckDBConfig = field(default_factory=DuckDBConfig)
    spark: SparkConfig = field(default_factory=SparkConfig)
    alerts: AlertsConfig | None = None
    lineage: LineageConfig | None = None
    schedules: Mapping[str, ScheduleConfig] = field(default_factory=lambda: MappingProxyType({}))
    origins: Mapping[str, str] = field(
        default_factory=lambda: MappingProxyType({}), repr=False, compare=False
    )

    @property
    def config_path(self) -> Path:
        """The ``headrace.toml`` this config was read from."""
        return self.root / CONFIG_FILE

    def explain(self) -> list[tuple[str, Any, str]]:
        """Every setting as ``(dotted key, value, origin)``; the state URL's password is masked."""
        values: list[tuple[str, Any]] = [
            ("name", self.name),
            ("profile", self.profile),
            ("lake", self.lake_root),
            ("state", _mask(self.state_url)),
            ("engine", self.engine),
            ("pipelines", self.pipelines_dir),
            ("models", self.models_dir),
        ]
        for section in _SECTIONS:
            model = getattr(self, section)
            if model is None:  # [alerts] / [lineage] not configured
                continue
            values += [(f"{section}.{key}", getattr(model, key)) for key in type(model).model_fields]
        values = [(k, _mask_webhook(v) if k == "alerts.webhook" else "***" if k == "lineage.api_key" and v else v)
                  for k, v in values]
        for name, schedule in self.schedules.items():
            values += [(f"schedules.{name}.{key}", getattr(schedule, key)) for key in ScheduleConfig.model_fields]
        return [(key, value, self._origin(key)) for key, value in values]

    def _origin(self, key: str) -> str:
        """Where a value came from; a table of settings ([spark.conf]) merged from several
        layers names each layer once."""
        if key in self.origins:
            return self.origins[key]
        parts = [o for k, o in self.origins.items() if k.startswith(f"{key}.")]
        return ", ".join(dict.fromkeys(parts)) or "default"


# --------------------------------------------------------------------------- public API


def find_project_root(start: Path) -> Path:
    """The nearest folder at or above ``start`` holding ``headrace.toml``, like git finds .git."""
    start = Path(start).expanduser().resolve()
    folder = start if start.is_dir() else start.parent
    for candidate in (folder, *folder.parents):
        if (candidate / CONFIG_FILE).is_file():
            return candidate
    raise ProjectError(
        f"no {CONFIG_FILE} found in {start} or its parents",
        hint="run `headrace init DIR` or pass --project DIR",
    )


def load_config(
    root: Path,
    *,
    profile: str | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> ResolvedConfig:
    """Read, validate, merge and resolve the project's ``headrace.toml``.

    ``overrides`` are explicit values keyed by dotted path (``{"run.workers": 2}``); a value
    of ``None`` means "not given", so a CLI can pass every option unconditionally.
    """
    root = Path(root).expanduser().resolve()
    if root.name == CONFIG_FILE and root.is_file():
        root = root.parent
    doc = _Doc.read(root / CONFIG_FILE)
    data = doc.parse()
    base, profiles = _split_file(data, doc, default_name=root.name)
    chosen, profile_origin = _select_profile(profile, data, profiles, doc)
    effective = {**base, **profiles.get(chosen or "", {})}
    effective = {key: _interpolate_entry(entry, doc) for key, entry in effective.items()}
    effective.update(_flatten_overrides(overrides or {}))
    settings = _validate(effective, doc)
    _check_alerts_target(effective, doc)
    _check_lineage_target(effective, doc)
    _check_other_profiles(base, profiles, chosen, doc)
    origins = {key: entry.origin for key, entry in effective.items()}
    origins["profile"] = profile_origin
    return _resolve(root, settings, chosen, origins)


# --------------------------------------------------------------------------- reading


@dataclass(frozen=True, slots=True)
class _Doc:
    """The file being loaded: builds errors that carry its path and, when found, the line."""

    path: Path
    text: str

    @classmethod
    def read(cls, path: Path) -> _Doc:
        """Read the file, turning OS and encoding failures into ProjectErrors."""
        try:
            return cls(path, path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ProjectError(
                f"no {CONFIG_FILE} in {path.parent}",
                hint="run `headrace init DIR` or pass --project DIR",
                path=str(path),
            ) from None
        except UnicodeDecodeError as exc:
            raise ProjectError(
                f"{CONFIG_FILE} is not valid UTF-8 (byte {exc.start})",
                hint="save the file as UTF-8",
                path=str(path),
            ) from None
        except OSError as exc:
            raise ProjectError(
                f"cannot read {path}: {exc.strerror or exc}",
                hint="check that the file exists and is readable",
                path=str(path),
            ) from None

    def parse(self) -> dict[str, Any]:
        """Parse TOML, reporting the line tomllib points at."""
        try:
            return tomllib.loads(self.text)
        except tomllib.TOMLDecodeError as exc:
            reason = str(exc)
            found = re.search(r"\(at line (\d+), column \d+\)|\(at end of document\)", reason)
            line = int(found[1]) if found and found[1] else None
            if found and found[1] is None:
                line = max(1, len(self.text.splitlines()))
            reason = reason[: found.start()].strip() if found else reason
            where = f" at line {line}" if line else ""
            raise ProjectError(
                f"{CONFIG_FILE}: invalid TOML{where}: {reason}",
                hint="check quoting, brackets and `key = value` syntax on that line",
                path=str(self.path),
                line=line,
            ) from None

    def error(self, message: str, *, hint: str, key: str | None = None) -> ProjectError:
        """A ProjectError about this file, located at ``key``'s line when it can be found."""
        return ProjectError(
            f"{CONFIG_FILE}: {message}",
            hint=hint,
            path=str(self.path),
            line=_find_line(self.text, key) if key else None,
        )


_KEY_PART = r"""(?:[A-Za-z0-9_\-]+|"[^"\n]*"|'[^'\n]*')"""
_DOTTED = rf"{_KEY_PART}(?:\s*\.\s*{_KEY_PART})*"
_HEADER_LINE = re.compile(rf"^\s*\[\[?\s*({_DOTTED})\s*\]\]?")
_ASSIGN_LINE = re.compile(rf"^\s*({_DOTTED})\s*=(.*)$")
_INLINE_KEY = re.compile(rf"[{{,]\s*({_DOTTED})\s*=")


def _split_key(dotted: str) -> list[str]:
    """``a."b.c".d`` -> ``["a", "b.c", "d"]``."""
    return [part.strip("\"'") for part in re.findall(_KEY_PART, dotted)]


def _key_lines(text: str) -> dict[tuple[str, ...], int]:
    """Map each key path to the first line that defines it (best effort: a line scanner, not a parser)."""
    lines: dict[tuple[str, ...], int] = {}
    table: tuple[str, ...] = ()
    for number, line in enumerate(text.splitlines(), start=1):
        if header := _HEADER_LINE.match(line):
            table = tuple(_split_key(header[1]))
            lines.setdefault(table, number)
        elif assign := _ASSIGN_LINE.match(line):
            key = (*table, *_split_key(assign[1]))
            lines.setdefault(key, number)
            if assign[2].lstrip().startswith("{"):
                for inner in _INLINE_KEY.finditer(assign[2]):
                    lines.setdefault((*key, *_split_key(inner[1])), number)
    return lines


def _find_line(text: str, dotted: str) -> int | None:
    """The line defining ``dotted``, else the line of its nearest defined parent."""
    lines = _key_lines(text)
    parts = tuple(dotted.split("."))
    for end in range(len(parts), 0, -1):
        if parts[:end] in lines:
            return lines[parts[:end]]
    return None


# --------------------------------------------------------------------------- structure


@dataclass(frozen=True, slots=True)
class _Entry:
    """One setting's raw value and where it came from (layer, key as written, env vars read)."""

    value: Any
    layer: str
    source: str
    env: tuple[str, ...] = ()

    @property
    def origin(self) -> str:
        """``"profile prod via $HEADRACE_STATE_URL"`` style, for explain()."""
        if not self.env:
            return self.layer
        return f"{self.layer} via " + ", ".join(f"${name}" for name in self.env)


def _unknown_key(key: str, prefix: str, valid: tuple[str, ...], doc: _Doc) -> ProjectError:
    """Unknown-key error with a suggestion, the valid keys, and a pointer for misplaced keys."""
    where = f"in [{prefix}]" if prefix else "at the top level"
    hint = f"valid keys in [{prefix}]: " if prefix else "valid top-level keys: "
    hint += ", ".join(sorted(valid))
    home = next((name for name, model in _SECTIONS.items() if key in model.model_fields), None)
    if key in _FILE_ONLY and prefix.startswith("profiles."):
        hint = f"{key!r} can only be set at the top level of {CONFIG_FILE}, not in a profile"
    elif home and home != prefix.rsplit(".", 1)[-1]:
        owner = prefix.rpartition(".")[0] if prefix.rpartition(".")[2] in _SECTIONS else prefix
        hint = f"{key!r} belongs in [{owner + '.' if owner else ''}{home}]; {hint}"
    return doc.error(
        f"unknown key {key!r} {where}.{did_you_mean(key, valid)}",
        hint=hint,
        key=f"{prefix}.{key}" if prefix else key,
    )


def _flatten(
    table: Mapping[str, Any], *, prefix: str, layer: str, allowed: tuple[str, ...], doc: _Doc
) -> dict[str, _Entry]:
    """Check one table's keys and flatten it to dotted keys, which makes deep-merge a dict update."""
    flat: dict[str, _Entry] = {}
    at = f"{prefix}." if prefix else ""
    for key, value in table.items():
        if key not in allowed:
            raise _unknown_key(key, prefix, allowed, doc)
        if key in _SECTIONS:
            flat.update(_flatten_section(key, value, prefix=f"{at}{key}", layer=layer, doc=doc))
        elif key in _NAMED:
            flat.update(_flatten_named(key, value, prefix=f"{at}{key}", layer=layer, doc=doc))
        elif isinstance(value, dict):
            raise doc.error(
                f"{at}{key} must be a value, not a table",
                hint=f"write `{key} = ...` instead of a [{at}{key}] table",
                key=f"{at}{key}",
            )
        else:
            flat[key] = _Entry(value, layer, f"{at}{key}")
    return flat


def _flatten_section(
    section: str, value: Any, *, prefix: str, layer: str, doc: _Doc
) -> dict[str, _Entry]:
    """Flatten ``[run]``-style tables, whose keys are the section model's fields."""
    if not isinstance(value, dict):
        raise doc.error(
            f"{prefix} must be a table, got {_show(value)}",
            hint=f"write the settings under a [{prefix}] header",
            key=prefix,
        )
    valid = tuple(_SECTIONS[section].model_fields)
    flat: dict[str, _Entry] = {}
    for key, item in value.items():
        if key not in valid:
            raise _unknown_key(key, prefix, valid, doc)
        if isinstance(item, dict) and (section, key) in _SUBTABLES:
            # [spark.conf]: merged key by key, so a profile can change one Spark setting
            for name, setting in item.items():
                flat[f"{section}.{key}.{name}"] = _Entry(setting, layer, f"{prefix}.{key}.{name}")
            continue
        if isinstance(item, dict):
            raise doc.error(
                f"{prefix}.{key} must be a value, not a table",
                hint=f"write `{key} = ...` under [{prefix}]",
                key=f"{prefix}.{key}",
            )
        flat[f"{section}.{key}"] = _Entry(item, layer, f"{prefix}.{key}")
    return flat


def _flatten_named(
    section: str, value: Any, *, prefix: str, layer: str, doc: _Doc
) -> dict[str, _Entry]:
    """Flatten ``[schedules.NAME]`` tables to ``schedules.NAME.key`` entries."""
    if not isinstance(value, dict):
        raise doc.error(
            f"{prefix} must be a table of [{prefix}.NAME] tables, got {_show(value)}",
            hint=f"write each one under a [{prefix}.NAME] header",
            key=prefix,
        )
    valid = tuple(_NAMED[section].model_fields)
    flat: dict[str, _Entry] = {}
    for name, table in value.items():
        if not _SCHEDULE_NAME.match(name):
            raise doc.error(
                f"{prefix}.{name}: invalid name {name!r}",
                hint="names use letters, digits, '_' and '-', and start with a letter or digit",
                key=f"{prefix}.{name}",
            )
        if not isinstance(table, dict):
            raise doc.error(
                f"{prefix}.{name} must be a table, got {_show(table)}",
                hint=f"write its settings under a [{prefix}.{name}] header",
                key=f"{prefix}.{name}",
            )
        for key, item in table.items():
            if key not in valid:
                raise _unknown_key(key, f"{prefix}.{name}", valid, doc)
            if isinstance(item, dict):
                raise doc.error(
                    f"{prefix}.{name}.{key} must be a value, not a table",
                    hint=f"write `{key} = ...` under [{prefix}.{name}]",
                    key=f"{prefix}.{name}.{key}",
                )
            flat[f"{section}.{name}.{key}"] = _Entry(item, layer, f"{prefix}.{name}.{key}")
    return flat


def _check_alerts_target(flat: Mapping[str, _Entry], doc: _Doc) -> None:
    """An [alerts] table that names no destination is a mistake, not a way to switch alerts off.

    Presence is checked (not the value), so ``webhook = "${URL:-}"`` can still be empty.
    """
    keys = [key for key in flat if key.startswith("alerts.")]
    if keys and "alerts.webhook" not in flat and "alerts.command" not in flat:
        entry = flat[keys[0]]
        raise doc.error(
            "[alerts] sets neither webhook nor command, so no alert could be delivered",
            hint="add webhook = \"https://...\" and/or command = \"...\" under [alerts]",
            key=entry.source.rpartition(".")[0],
        )


def _check_lineage_target(flat: Mapping[str, _Entry], doc: _Doc) -> None:
    """A [lineage] table without url or file could send nothing (as for [alerts])."""
    keys = [key for key in flat if key.startswith("lineage.")]
    if keys and "lineage.url" not in flat and "lineage.file" not in flat:
        raise doc.error(
            "[lineage] sets neither url nor file, so no lineage event could be sent",
            hint="add url = \"http://...\" (an OpenLineage server such as Marquez) and/or file = \"...\" under [lineage]",
            key=flat[keys[0]].source.rpartition(".")[0],
        )


def _split_file(
    data: Mapping[str, Any], doc: _Doc, *, default_name: str
) -> tuple[dict[str, _Entry], dict[str, dict[str, _Entry]]]:
    """Validate the whole file's structure; return the flat base and each flat profile."""
    top = {key: value for key, value in data.items() if key not in ("default_profile", "profiles")}
    base = _flatten(top, prefix="", layer=CONFIG_FILE, allowed=(*_TOP_KEYS,), doc=doc)
    base.setdefault("name", _Entry(default_name, "default", "name"))
    raw_profiles = data.get("profiles", {})
    if not isinstance(raw_profiles, dict):
        raise doc.error(
            "profiles must be a table of profile tables",
            hint="write each profile as a [profiles.NAME] table",
            key="profiles",
        )
    profiles: dict[str, dict[str, _Entry]] = {}
    for name, table in raw_profiles.items():
        if not isinstance(table, dict):
            raise doc.error(
                f"profiles.{name} must be a table, got {_show(table)}",
                hint=f"write the profile's settings under a [profiles.{name}] header",
                key=f"profiles.{name}",
            )
        profiles[name] = _flatten(
            table, prefix=f"profiles.{name}", layer=f"profile {name}", allowed=_PROFILE_KEYS, doc=doc
        )
    _check_default_profile(data, profiles, doc)
    return base, profiles


def _check_default_profile(
    data: Mapping[str, Any], profiles: Mapping[str, Any], doc: _Doc
) -> None:
    """Catch a wrong default_profile even when --profile hides it today."""
    default = data.get("default_profile")
    if default is None:
        return
    if not isinstance(default, str):
        raise doc.error(
            f"default_profile must be a profile name, got {_show(default)}",
            hint=_profiles_hint(profiles),
            key="default_profile",
        )
    if "${" not in default and default not in profiles:
        raise doc.error(
            f"default_profile names unknown profile {default!r}.{did_you_mean(default, profiles)}",
            hint=_profiles_hint(profiles),
            key="default_profile",
        )


def _profiles_hint(profiles: Mapping[str, Any]) -> str:
    """List the defined profiles, or say how to define one."""
    if not profiles:
        return f"{CONFIG_FILE} defines no profiles; add a [profiles.NAME] table"
    return f"defined profiles: {', '.join(sorted(profiles))}"


def _select_profile(
    explicit: str | None,
    data: Mapping[str, Any],
    profiles: Mapping[str, Any],
    doc: _Doc,
) -> tuple[str | None, str]:
    """Pick the profile (argument > $HEADRACE_PROFILE > default_profile) and say where it came from."""
    line: int | None = None
    if explicit:
        name, origin, via = explicit, "override", ""
    elif env := os.environ.get(PROFILE_ENV):
        name, origin, via = env, f"env ${PROFILE_ENV}", f" (from ${PROFILE_ENV})"
    elif (default := data.get("default_profile")) is not None:
        entry = _interpolate_entry(_Entry(default, CONFIG_FILE, "default_profile"), doc)
        name, origin, via = entry.value, entry.origin, " (from default_profile)"
        line = _find_line(doc.text, "default_profile")
    else:
        return None, "default"
    if name not in profiles:
        raise ProjectError(
            f"Unknown profile {name!r}{via}.{did_you_mean(name, profiles)}",
            hint=_profiles_hint(profiles),
            path=str(doc.path),
            line=line,
        )
    return name, origin


def _flatten_overrides(overrides: Mapping[str, Any]) -> dict[str, _Entry]:
    """Check override keys (dotted setting paths); ``None`` values are "not given"."""
    flat: dict[str, _Entry] = {}
    for key, value in overrides.items():
        if value is None:
            continue
        if key not in _SETTING_KEYS:
            raise ProjectError(
                f"unknown setting {key!r} in overrides.{did_you_mean(key, _SETTING_KEYS)}",
                hint=f"valid settings: {', '.join(_SETTING_KEYS)}",
            )
        flat[key] = _Entry(os.fspath(value) if isinstance(value, os.PathLike) else value, "override", key)
    return flat


# --------------------------------------------------------------------------- interpolation


def _interpolate_entry(entry: _Entry, doc: _Doc) -> _Entry:
    """Expand ``${VAR}``, ``${VAR:-default}`` and ``$${`` in a string value; record vars read."""
    if not isinstance(entry.value, str) or "${" not in entry.value:
        return entry
    used: list[str] = []

    def expand(match: re.Match[str]) -> str:
        if match[0] == "$${":
            return "${"
        name, default = match["name"], match["default"]
        if name is None:
            raise doc.error(
                f"{entry.source}: malformed variable reference in {entry.value!r}",
                hint="write ${VAR} or ${VAR:-default}; write $${ for a literal ${",
                key=entry.source,
            )
        value = os.environ.get(name)
        if default is not None and not value:
            return default
        if value is None:
            raise doc.error(
                f"environment variable {name} is not set (needed by {entry.source})",
                hint=f"export {name}=... (or give a default: ${{{name}:-value}})",
                key=entry.source,
            )
        used.append(name)
        return value

    expanded = _REF.sub(expand, entry.value)
    return _Entry(expanded, entry.layer, entry.source, tuple(dict.fromkeys(used)))


def _has_reference(value: Any) -> bool:
    """True for strings whose final value depends on the environment."""
    return isinstance(value, str) and "${" in value.replace("$${", "")


# --------------------------------------------------------------------------- validation


def _unflatten(flat: Mapping[str, _Entry]) -> dict[str, Any]:
    """Dotted keys back to the nested shape the pydantic model expects."""
    nested: dict[str, Any] = {}
    for key, entry in flat.items():
        section, _, sub = key.partition(".")
        if section in _NAMED and sub:
            name, _, sub = sub.partition(".")
            nested.setdefault(section, {}).setdefault(name, {})[sub] = entry.value
        elif (section, sub.partition(".")[0]) in _SUBTABLES and "." in sub:
            table, _, name = sub.partition(".")
            nested.setdefault(section, {}).setdefault(table, {})[name] = entry.value
        elif sub:
            nested.setdefault(section, {})[sub] = entry.value
        else:
            nested[key] = entry.value
    return nested


def _validate(flat: Mapping[str, _Entry], doc: _Doc) -> _Settings:
    """Validate merged settings; the first problem becomes a ProjectError about its source key."""
    try:
        return _Settings.model_validate(_unflatten(flat))
    except ValidationError as exc:
        raise _convert(exc, flat, doc) from None


def _convert(exc: ValidationError, flat: Mapping[str, _Entry], doc: _Doc) -> ProjectError:
    """Rephrase pydantic's first error using our field descriptions; never echo its text."""
    error = exc.errors()[0]
    key = _error_key(error["loc"])
    entry = flat.get(key)
    value = entry.value if entry else error.get("input")
    source = entry.source if entry else key
    from_env = f" (from {', '.join('$' + name for name in entry.env)})" if entry and entry.env else ""
    description, _ = _describe(key)
    cause = error.get("ctx", {}).get("error")
    if error["type"] == "missing":
        message, hint = f"{source} is required", _expects(key)
    elif isinstance(cause, _Invalid):
        message, hint = f"{source}{from_env}: {cause}", cause.hint or _expects(key)
    else:
        message = f"{source} must be {description}, got {_show(value, key)}{from_env}"
        hint = _expects(key)
    if entry and entry.layer == "override":
        return ProjectError(f"override {message}", hint=hint)
    return doc.error(message, hint=hint, key=source)


def _error_key(loc: tuple[int | str, ...]) -> str:
    """The dotted setting key an error location points at (drops pydantic's inner markers)."""
    parts = [str(part) for part in loc]
    if parts and parts[0] in _NAMED and len(parts) >= 3:
        return ".".join(parts[:3])
    for end in (2, 1):
        candidate = ".".join(parts[:end])
        if candidate in _SETTING_KEYS or candidate in _SECTIONS:
            return candidate
    return ".".join(parts) or "settings"


def _expects(key: str) -> str:
    """Hint text: what the key takes and what leaving it out would give."""
    description, default = _describe(key)
    if key == "name":
        return f"{key} expects {description}; leave it out to use the folder name"
    if default is _REQUIRED:
        return f"{key} expects {description}; it has no default"
    if default is None:
        return f"{key} expects {description}; leave it out to keep it unset"
    return f"{key} expects {description}; the default is {default!r}"


def _describe(key: str) -> tuple[str, Any]:
    """What a key expects (the ``description`` on its model field) and its default."""
    section, _, sub = key.partition(".")
    model: type[_Section] = _SECTIONS[section] if sub and section in _SECTIONS else _Settings
    if section in _NAMED and "." in sub:
        model, sub = _NAMED[section], sub.partition(".")[2]
    info = model.model_fields.get(sub or section)
    if info is None:
        return "a valid value", None
    if info.is_required():
        return info.description or "a valid value", _REQUIRED
    default = info.get_default(call_default_factory=True)
    if isinstance(default, Path):
        default = str(default)
    return info.description or "a valid value", default


def _check_other_profiles(
    base: Mapping[str, _Entry],
    profiles: Mapping[str, Mapping[str, _Entry]],
    chosen: str | None,
    doc: _Doc,
) -> None:
    """Type-check unselected profiles too, so a broken prod fails in dev CI, not in prod.

    Values that still hold ``${...}`` are skipped: they cannot be judged without their env.
    """
    for name, table in profiles.items():
        if name == chosen:
            continue
        merged = {key: e for key, e in {**base, **table}.items() if not _has_reference(e.value)}
        # A named table whose required key was dropped above cannot be judged either.
        for section, model in _NAMED.items():
            required = [k for k, info in model.model_fields.items() if info.is_required()]
            groups = {key.split(".")[1] for key in merged if key.startswith(f"{section}.")}
            for group in groups:
                if any(f"{section}.{group}.{k}" not in merged for k in required):
                    merged = {k: e for k, e in merged.items() if not k.startswith(f"{section}.{group}.")}
        _validate(merged, doc)


# --------------------------------------------------------------------------- resolution


def _resolve(
    root: Path, settings: _Settings, profile: str | None, origins: dict[str, str]
) -> ResolvedConfig:
    """Make paths absolute against the project folder and freeze the result."""
    duckdb = settings.duckdb.model_copy(
        update={"temp_directory": _resolve_path(root, settings.duckdb.temp_directory)}
    )
    return ResolvedConfig(
        root=root,
        name=settings.name,
        profile=profile,
        lake_root=_resolve_path(root, settings.lake),
        state_url=normalise_state_url(settings.state, root),
        engine=settings.engine,
        pipelines_dir=_resolve_path(root, settings.pipelines),
        models_dir=_resolve_path(root, settings.models),
        run=settings.run,
        write=settings.write,
        duckdb=duckdb,
        spark=settings.spark,
        alerts=settings.alerts if settings.alerts is not None and settings.alerts.enabled else None,
        lineage=settings.lineage if settings.lineage is not None and settings.lineage.enabled else None,
        schedules=MappingProxyType(dict(settings.schedules)),
        origins=MappingProxyType(origins),
    )


def _resolve_path(root: Path, value: str | Path) -> Path:
    """Absolute, lexically normalised path; relative ones hang off the project folder."""
    return Path(os.path.normpath(root / Path(value).expanduser()))


def normalise_state_url(url: str, root: Path) -> str:
    """Rewrite relative sqlite URLs to ``sqlite:////abs/path.db``; other URLs pass untouched.

    The state store is opened from many working directories (CLI, tests, workers), so a
    relative database path must not depend on the current directory.
    """
    match = _SQLITE_URL.match(url)
    if not match:
        return url
    scheme, rest = match[1], match[2]
    path, sep, query = rest[1:].partition("?")
    if not path or path == ":memory:" or path.startswith("file:"):
        return url
    return f"{scheme}:///{_resolve_path(root, path)}{sep}{query}"


def _mask_webhook(url: Any) -> Any:
    """Webhook URLs carry their secret in the path (Slack, Teams): keep only scheme and host."""
    if not isinstance(url, str):
        return url
    match = re.match(r"^([A-Za-z][\w+.\-]*://[^/?#]+)(.*)$", url)
    return f"{match[1]}/***" if match and match[2] not in ("", "/") else url


def _mask(url: str) -> str:
    """Hide a password in a URL so it never lands in terminals or logs."""
    return re.sub(r"(://[^:/@\s]*:)[^@/\s]*@", r"\1***@", url)


def _show(value: Any, key: str = "") -> str:
    """A short repr for messages (passwords masked)."""
    text = repr(_mask(value) if key == "state" and isinstance(value, str) else value)
    return text if len(text) <= 60 else text[:57] + "..."
