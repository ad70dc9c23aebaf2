"""Tests for headrace.toml loading: defaults, profiles, interpolation, overrides, errors."""

from __future__ import annotations

import dataclasses
import os
import textwrap
from datetime import time, timedelta
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from headrace.errors import ProjectError
from headrace.project.config import (
    ALERT_KINDS,
    CONFIG_FILE,
    AlertsConfig,
    DuckDBConfig,
    ResolvedConfig,
    RunConfig,
    ScheduleConfig,
    WriteConfig,
    find_project_root,
    load_config,
    normalise_state_url,
    parse_duration,
    parse_size,
)

MB = 1024 * 1024

FULL = """\
name = "demo"
default_profile = "dev"
lake = "lake"
state = "sqlite:///.headrace/state.db"
engine = "duckdb"
pipelines = "pipes"
models = "sql"

[run]
workers = 3
retries = 5
backoff_seconds = 0.5
max_backoff_seconds = 10.0
lock_timeout_seconds = 60

[write]
compression = "gzip"
compression_level = 6
target_file_size = "64MB"

[duckdb]
memory_limit = "4GB"
threads = 2
temp_directory = "spill"

[profiles.dev]
lake = "dev-lake"

[profiles.prod]
lake = "/data/lake"
state = "${HEADRACE_STATE_URL}"
[profiles.prod.run]
workers = 8
"""


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests must not depend on the developer's shell."""
    for name in ("HEADRACE_PROFILE", "HEADRACE_STATE_URL", "HR_TEST_VAR", "HR_LAKE"):
        monkeypatch.delenv(name, raising=False)


def write(root: Path, text: str) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / CONFIG_FILE).write_text(textwrap.dedent(text))
    return root


def error_for(root: Path, text: str, **kwargs: object) -> ProjectError:
    write(root, text)
    with pytest.raises(ProjectError) as info:
        load_config(root, **kwargs)  # type: ignore[arg-type]
    return info.value


def assert_clean(err: ProjectError) -> None:
    """Messages are short and never leak pydantic wording."""
    assert err.hint
    assert len(err.message.splitlines()) <= 2
    for leak in ("pydantic", "validation error", "Input should", "type=", "errors.pydantic"):
        assert leak not in str(err)


# --------------------------------------------------------------------------- happy paths


def test_defaults_with_minimal_file(tmp_path: Path) -> None:
    root = write(tmp_path / "myproj", "")
    cfg = load_config(root)
    assert cfg.root == root.resolve()
    assert cfg.name == "myproj"
    assert cfg.profile is None
    assert cfg.lake_root == root / "lake"
    assert cfg.state_url == f"sqlite:///{root}/.headrace/state.db"
    assert cfg.state_url.startswith("sqlite:////")
    assert cfg.engine == "duckdb"
    assert cfg.pipelines_dir == root / "pipelines"
    assert cfg.models_dir == root / "models"
    assert cfg.run == RunConfig(
        workers=4, retries=2, backoff_seconds=1.0, max_backoff_seconds=30.0, lock_timeout_seconds=600.0
    )
    assert cfg.write == WriteConfig(compression="zstd", compression_level=None, target_file_size=128 * MB)
    assert cfg.duckdb.memory_limit is None
    assert cfg.duckdb.threads is None
    assert cfg.duckdb.temp_directory == root / ".headrace" / "tmp"
    assert cfg.config_path == root / CONFIG_FILE


def test_every_section_parsed(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, FULL), profile="dev")
    assert cfg.name == "demo"
    assert cfg.profile == "dev"
    assert cfg.lake_root == tmp_path / "dev-lake"
    assert cfg.pipelines_dir == tmp_path / "pipes"
    assert cfg.models_dir == tmp_path / "sql"
    assert cfg.run == RunConfig(
        workers=3, retries=5, backoff_seconds=0.5, max_backoff_seconds=10.0, lock_timeout_seconds=60.0
    )
    assert cfg.write == WriteConfig(compression="gzip", compression_level=6, target_file_size=64 * MB)
    assert cfg.duckdb == DuckDBConfig(memory_limit="4GB", threads=2, temp_directory=tmp_path / "spill")


def test_result_is_immutable(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, ""))
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.name = "x"  # type: ignore[misc]
    with pytest.raises(Exception, match="frozen"):
        cfg.run.workers = 9  # type: ignore[misc]
    with pytest.raises(TypeError):
        cfg.origins["lake"] = "x"  # type: ignore[index]


def test_project_file_path_is_accepted_as_root(tmp_path: Path) -> None:
    write(tmp_path, 'name = "x"')
    assert load_config(tmp_path / CONFIG_FILE).root == tmp_path.resolve()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (1024, 1024),
        ("1KB", 1024),
        ("128MB", 128 * MB),
        ("2 gb", 2 * 1024**3),
        ("1.5MB", int(1.5 * MB)),
        ("4MiB", 4 * MB),
        ("4096", 4096),
    ],
)
def test_parse_size(text: object, expected: int) -> None:
    assert parse_size(text) == expected


def test_compression_level_dropped_for_codec_without_levels(tmp_path: Path) -> None:
    root = write(
        tmp_path,
        """
        [write]
        compression = "zstd"
        compression_level = 9
        [profiles.fast]
        write = { compression = "SNAPPY" }
        """,
    )
    assert load_config(root).write.compression_level == 9
    fast = load_config(root, profile="fast").write
    assert (fast.compression, fast.compression_level) == ("snappy", None)


# --------------------------------------------------------------------------- profiles


def test_profile_deep_merge(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HEADRACE_STATE_URL", "postgresql://u:pw@db/state")
    cfg = load_config(write(tmp_path, FULL), profile="prod")
    assert cfg.profile == "prod"
    assert cfg.lake_root == Path("/data/lake")
    assert cfg.run.workers == 8  # from [profiles.prod.run]
    assert cfg.run.retries == 5  # rest of [run] kept from the base
    assert cfg.run.backoff_seconds == 0.5
    assert cfg.write.compression == "gzip"


def test_profile_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = write(
        tmp_path,
        """
        default_profile = "a"
        [profiles.a]
        lake = "la"
        [profiles.b]
        lake = "lb"
        [profiles.c]
        lake = "lc"
        """,
    )
    assert load_config(root).profile == "a"
    monkeypatch.setenv("HEADRACE_PROFILE", "b")
    assert load_config(root).lake_root == root / "lb"
    assert load_config(root, profile="c").lake_root == root / "lc"
    origins = {k: o for k, _, o in load_config(root).explain()}
    assert origins["profile"] == "env $HEADRACE_PROFILE"


def test_no_profile_means_base_only(tmp_path: Path) -> None:
    root = write(tmp_path, '[profiles.prod]\nlake = "/x"\n')
    cfg = load_config(root)
    assert cfg.profile is None
    assert cfg.lake_root == root / "lake"


def test_unknown_profile_lists_defined(tmp_path: Path) -> None:
    err = error_for(tmp_path, FULL, profile="prd")
    assert "Unknown profile 'prd'. Did you mean 'prod'?" in err.message
    assert err.hint == "defined profiles: dev, prod"
    assert err.path == str(tmp_path / CONFIG_FILE)
    assert_clean(err)


def test_unknown_profile_from_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HEADRACE_PROFILE", "stage")
    err = error_for(tmp_path, FULL)
    assert "'stage' (from $HEADRACE_PROFILE)" in err.message


def test_bad_default_profile_is_reported_with_line(tmp_path: Path) -> None:
    err = error_for(tmp_path, 'name = "x"\ndefault_profile = "dve"\n[profiles.dev]\n', profile="dev")
    assert "default_profile" in err.message
    assert "Did you mean 'dev'?" in err.message
    assert err.line == 2


# --------------------------------------------------------------------------- interpolation


def test_interpolation_and_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = write(
        tmp_path,
        """
        lake = "${HR_LAKE:-fallback}"
        name = "p-${HR_TEST_VAR}"
        """,
    )
    monkeypatch.setenv("HR_TEST_VAR", "one")
    cfg = load_config(root)
    assert cfg.lake_root == root / "fallback"
    assert cfg.name == "p-one"
    monkeypatch.setenv("HR_LAKE", "/abs/lake")
    cfg = load_config(root)
    assert cfg.lake_root == Path("/abs/lake")
    origins = {k: o for k, _, o in cfg.explain()}
    assert origins["lake"] == "headrace.toml via $HR_LAKE"
    assert origins["name"] == "headrace.toml via $HR_TEST_VAR"


def test_interpolation_into_number(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HR_TEST_VAR", "6")
    cfg = load_config(write(tmp_path, '[run]\nworkers = "${HR_TEST_VAR}"\n'))
    assert cfg.run.workers == 6


def test_missing_variable_names_key_and_var(tmp_path: Path) -> None:
    err = error_for(tmp_path, FULL, profile="prod")
    assert "profiles.prod.state" in err.message
    assert "HEADRACE_STATE_URL" in err.message
    assert err.hint is not None and err.hint.startswith("export HEADRACE_STATE_URL=...")
    assert err.line == FULL.splitlines().index('state = "${HEADRACE_STATE_URL}"') + 1
    assert_clean(err)


def test_missing_variable_at_top_level(tmp_path: Path) -> None:
    err = error_for(tmp_path, 'state = "${HEADRACE_STATE_URL}"\n')
    assert "(needed by state)" in err.message
    assert err.line == 1


def test_unused_values_are_not_interpolated(tmp_path: Path) -> None:
    # prod references an unset variable; dev never uses it, and the base value is overridden.
    root = write(tmp_path, 'lake = "${HR_LAKE}"\n' + FULL.replace('lake = "lake"\n', ""))
    assert load_config(root, profile="dev").lake_root == root / "dev-lake"


def test_escape_keeps_literal(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, 'name = "a$${HR_TEST_VAR}b"\n'))
    assert cfg.name == "a${HR_TEST_VAR}b"


def test_malformed_reference(tmp_path: Path) -> None:
    err = error_for(tmp_path, 'lake = "${1bad}"\n')
    assert "lake" in err.message
    assert "malformed" in err.message
    assert_clean(err)


# --------------------------------------------------------------------------- overrides


def test_overrides_win_over_everything(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HEADRACE_STATE_URL", "postgresql://db/state")
    cfg = load_config(
        write(tmp_path, FULL),
        profile="prod",
        overrides={"run.workers": 2, "lake": Path("/x"), "duckdb.threads": None},
    )
    assert cfg.run.workers == 2
    assert cfg.lake_root == Path("/x")
    assert cfg.duckdb.threads == 2  # None means "not given"
    origins = {k: o for k, _, o in cfg.explain()}
    assert origins["run.workers"] == "override"
    assert origins["lake"] == "override"


def test_override_validated(tmp_path: Path) -> None:
    err = error_for(tmp_path, "", overrides={"run.workers": 0})
    assert err.message == "override run.workers must be an integer >= 1, got 0"
    assert_clean(err)


def test_unknown_override(tmp_path: Path) -> None:
    err = error_for(tmp_path, "", overrides={"run.workerz": 2})
    assert "'run.workerz'" in err.message
    assert "Did you mean 'run.workers'?" in err.message


# --------------------------------------------------------------------------- paths and URLs


def test_relative_and_absolute_paths(tmp_path: Path) -> None:
    root = write(
        tmp_path / "proj",
        """
        lake = "../shared/lake"
        pipelines = "/opt/pipes"
        models = "./m"
        [duckdb]
        temp_directory = "/tmp/spill"
        """,
    )
    cfg = load_config(root)
    assert cfg.lake_root == tmp_path / "shared" / "lake"
    assert cfg.pipelines_dir == Path("/opt/pipes")
    assert cfg.models_dir == root / "m"
    assert cfg.duckdb.temp_directory == Path("/tmp/spill")
    for path in (cfg.lake_root, cfg.pipelines_dir, cfg.models_dir, cfg.duckdb.temp_directory):
        assert path.is_absolute()


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("sqlite:///state.db", "sqlite:////proj/state.db"),
        ("sqlite:///.headrace/s.db?timeout=5", "sqlite:////proj/.headrace/s.db?timeout=5"),
        ("sqlite:////abs/s.db", "sqlite:////abs/s.db"),
        ("sqlite+pysqlite:///s.db", "sqlite+pysqlite:////proj/s.db"),
        ("sqlite://", "sqlite://"),
        ("sqlite:///:memory:", "sqlite:///:memory:"),
        ("postgresql://u:p@h:5432/db?sslmode=require", "postgresql://u:p@h:5432/db?sslmode=require"),
    ],
)
def test_state_url_normalisation(url: str, expected: str) -> None:
    assert normalise_state_url(url, Path("/proj")) == expected


def test_postgres_url_passes_through(tmp_path: Path) -> None:
    url = "postgresql+psycopg://user:pa55@host/db"
    cfg = load_config(write(tmp_path, f'state = "{url}"\n'))
    assert cfg.state_url == url
    row = next(r for r in cfg.explain() if r[0] == "state")
    assert row[1] == "postgresql+psycopg://user:***@host/db"


# --------------------------------------------------------------------------- errors


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ProjectError) as info:
        load_config(tmp_path)
    assert "no headrace.toml" in info.value.message
    assert info.value.hint == "run `headrace init DIR` or pass --project DIR"


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores file permissions")
def test_unreadable_file(tmp_path: Path) -> None:
    path = write(tmp_path, "") / CONFIG_FILE
    path.chmod(0)
    try:
        with pytest.raises(ProjectError, match="cannot read"):
            load_config(tmp_path)
    finally:
        path.chmod(0o644)


def test_file_is_a_directory(tmp_path: Path) -> None:
    (tmp_path / CONFIG_FILE).mkdir()
    with pytest.raises(ProjectError, match="cannot read") as info:
        load_config(tmp_path)
    assert_clean(info.value)


def test_toml_syntax_error_has_line(tmp_path: Path) -> None:
    err = error_for(tmp_path, 'name = "x"\n[run]\nworkers = \n')
    assert "invalid TOML at line 3" in err.message
    assert err.line == 3
    assert err.path == str(tmp_path / CONFIG_FILE)
    assert_clean(err)


def test_unknown_key_in_section(tmp_path: Path) -> None:
    err = error_for(tmp_path, 'name = "x"\n\n[run]\nretries = 1\nworkerz = 4\n')
    assert err.message == "headrace.toml: unknown key 'workerz' in [run]. Did you mean 'workers'?"
    assert err.hint == (
        "valid keys in [run]: backoff_seconds, lock_timeout_seconds, max_backoff_seconds, "
        "retries, workers"
    )
    assert err.line == 5
    assert_clean(err)


def test_unknown_key_in_profile_section(tmp_path: Path) -> None:
    err = error_for(tmp_path, FULL.replace("workers = 8", "workerz = 8"), profile="dev")
    assert "unknown key 'workerz' in [profiles.prod.run]. Did you mean 'workers'?" in err.message
    assert err.line == FULL.splitlines().index("workers = 8") + 1


def test_unknown_top_level_key(tmp_path: Path) -> None:
    err = error_for(tmp_path, 'lak = "x"\n')
    assert "unknown key 'lak' at the top level. Did you mean 'lake'?" in err.message
    assert err.line == 1


def test_misplaced_key_hint(tmp_path: Path) -> None:
    err = error_for(tmp_path, "workers = 4\n")
    assert err.hint is not None and err.hint.startswith("'workers' belongs in [run]")


def test_file_only_key_in_profile(tmp_path: Path) -> None:
    err = error_for(tmp_path, '[profiles.dev]\nname = "x"\n')
    assert "unknown key 'name' in [profiles.dev]" in err.message
    assert err.hint is not None and "top level" in err.hint
    assert err.line == 2


def test_section_must_be_table(tmp_path: Path) -> None:
    err = error_for(tmp_path, "run = 4\n")
    assert "run must be a table" in err.message


@pytest.mark.parametrize(
    ("text", "key", "fragment", "line"),
    [
        ("[run]\nworkers = 0\n", "run.workers", "must be an integer >= 1, got 0", 2),
        ("[run]\nworkers = true\n", "run.workers", "must be an integer >= 1, got True", 2),
        ("[run]\nretries = -1\n", "run.retries", "must be an integer >= 0", 2),
        ("[run]\nbackoff_seconds = 'soon'\n", "run.backoff_seconds", "must be a number", 2),
        ("[run]\nbackoff_seconds = 5\nmax_backoff_seconds = 1\n", "run.max_backoff_seconds", "smaller", 3),
        ("[write]\ntarget_file_size = '12XB'\n", "write.target_file_size", "got '12XB'", 2),
        ("[write]\ntarget_file_size = 0\n", "write.target_file_size", "a size > 0", 2),
        ("[write]\ncompression = 'zstdd'\n", "write.compression", "Unknown compression 'zstdd'. Did you mean 'zstd'?", 2),
        ("[write]\ncompression_level = 40\n", "write.compression_level", "out of range for zstd", 2),
        ("[duckdb]\nmemory_limit = 'lots'\n", "duckdb.memory_limit", "not a memory size", 2),
        ("[duckdb]\nthreads = 0\n", "duckdb.threads", "must be an integer >= 1", 2),
        ("engine = 'duckbd'\n", "engine", "Unknown engine 'duckbd'. Did you mean 'duckdb'?", 1),
        ("state = 'mysql://h/db'\n", "state", "unsupported database 'mysql'", 1),
        ("state = 'postgres://h/db'\n", "state", "postgres://", 1),
        ("state = 'state.db'\n", "state", "not a database URL", 1),
        ("lake = 's3://bucket/lake'\n", "lake", "is a URL", 1),
        ("lake = 3\n", "lake", "must be a folder path, got 3", 1),
        ("name = ''\n", "name", "must be a non-empty string", 1),
        ("run = { workers = 0 }\n", "run.workers", "must be an integer >= 1", 1),
    ],
)
def test_value_errors_name_the_key(tmp_path: Path, text: str, key: str, fragment: str, line: int) -> None:
    err = error_for(tmp_path, text)
    assert err.message.startswith(f"headrace.toml: {key}")
    assert fragment in err.message
    assert err.line == line
    assert_clean(err)


def test_value_error_in_profile_names_profile_key(tmp_path: Path) -> None:
    err = error_for(tmp_path, "[profiles.prod.run]\nworkers = 0\n", profile="prod")
    assert err.message.startswith("headrace.toml: profiles.prod.run.workers must be")
    assert err.line == 2


def test_unselected_profile_is_type_checked(tmp_path: Path) -> None:
    err = error_for(tmp_path, '[profiles.prod]\nengine = "sparc"\n[profiles.dev]\n', profile="dev")
    assert "profiles.prod.engine" in err.message
    assert "Unknown engine 'sparc'" in err.message


def test_password_not_echoed(tmp_path: Path) -> None:
    err = error_for(tmp_path, "state = 'mysql://u:hunter2@h/db'\n")
    assert "hunter2" not in str(err)


# --------------------------------------------------------------------------- explain


def test_explain_origins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HEADRACE_STATE_URL", "postgresql://db/state")
    cfg = load_config(write(tmp_path, FULL), profile="prod", overrides={"run.retries": 1})
    rows = cfg.explain()
    origins = {key: origin for key, _, origin in rows}
    values = {key: value for key, value, _ in rows}
    assert origins["name"] == "headrace.toml"
    assert origins["profile"] == "override"
    assert origins["lake"] == "profile prod"
    assert origins["state"] == "profile prod via $HEADRACE_STATE_URL"
    assert origins["run.workers"] == "profile prod"
    assert origins["run.retries"] == "override"
    assert origins["write.compression"] == "headrace.toml"
    assert values["write.target_file_size"] == 64 * MB
    bare = load_config(write(tmp_path / "bare", ""))
    assert {origin for _, _, origin in bare.explain()} == {"default"}
    expected_keys = {
        "name", "profile", "lake", "state", "engine", "pipelines", "models",
        *(f"run.{k}" for k in RunConfig.model_fields),
        *(f"write.{k}" for k in WriteConfig.model_fields),
        *(f"duckdb.{k}" for k in DuckDBConfig.model_fields),
        *(f"spark.{k}" for k in ("master", "remote", "app_name", "start_timeout_seconds", "optimize_write",
                                 "local_threshold", "conf")),
    }
    assert set(origins) == expected_keys


def test_default_profile_origin(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, FULL))
    assert ("profile", "dev", "headrace.toml") in cfg.explain()


def test_resolved_config_constructible_directly(tmp_path: Path) -> None:
    cfg = ResolvedConfig(
        root=tmp_path, name="n", profile=None, lake_root=tmp_path, state_url="sqlite://",
        engine="duckdb", pipelines_dir=tmp_path, models_dir=tmp_path,
    )
    assert cfg.run.workers == 4
    assert all(origin == "default" for _, _, origin in cfg.explain())


# --------------------------------------------------------------------------- project root


def test_find_project_root_walks_up(tmp_path: Path) -> None:
    write(tmp_path / "proj", "")
    deep = tmp_path / "proj" / "a" / "b"
    deep.mkdir(parents=True)
    assert find_project_root(deep) == (tmp_path / "proj").resolve()
    assert find_project_root(tmp_path / "proj") == (tmp_path / "proj").resolve()
    (deep / "f.py").write_text("")
    assert find_project_root(deep / "f.py") == (tmp_path / "proj").resolve()


def test_find_project_root_none(tmp_path: Path) -> None:
    with pytest.raises(ProjectError) as info:
        find_project_root(tmp_path)
    assert info.value.message == f"no headrace.toml found in {tmp_path.resolve()} or its parents"
    assert info.value.hint == "run `headrace init DIR` or pass --project DIR"


# --------------------------------------------------------------------------- property


@settings(max_examples=50, deadline=None, database=None)
@given(st.text(alphabet=st.sampled_from("ab${}:-_$X"), max_size=12))
def test_interpolation_never_leaks_pydantic(text: str) -> None:
    """Any string in a string setting either loads or fails with a clean ProjectError."""
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        (root / CONFIG_FILE).write_text(f"name = '{text}'\n")
        try:
            cfg = load_config(root)
        except ProjectError as err:
            assert_clean(err)
        else:
            if "$" not in text:
                assert cfg.name == text


# --------------------------------------------------------------------------- schedules and alerts

OPS = """\
name = "ops"

[schedules.daily]
cron = "0  6 * * *"
select = ["+gold.daily_revenue"]
catchup = "ALL"
timezone = "Europe/Paris"
max_duration = "1h30m"
deadline = "07:30"

[schedules.hourly]
cron = "@Hourly"
select = "bronze.*"

[alerts]
webhook = "${HR_HOOK:-}"
command = "notify-send headrace"
on = ["run_failed", "sla_missed"]
retries = 5
timeout_seconds = 2.5

[profiles.prod.schedules.daily]
cron = "0 5 * * *"

[profiles.prod.schedules.hourly]
enabled = false

[profiles.quiet.alerts]
command = ""
"""


def test_schedules_and_alerts_load_typed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HR_HOOK", "https://hooks.example.com/services/T0/B0/s3cr3t")
    cfg = load_config(write(tmp_path, OPS))
    daily, hourly = cfg.schedules["daily"], cfg.schedules["hourly"]
    assert daily == ScheduleConfig(cron="0 6 * * *", select=("+gold.daily_revenue",), catchup="all",
                                   timezone="Europe/Paris", max_duration=timedelta(minutes=90),
                                   deadline=time(7, 30))
    assert str(daily.tz) == "Europe/Paris"
    assert (hourly.cron, hourly.select, hourly.catchup, hourly.timezone, hourly.enabled) == (
        "@hourly", ("bronze.*",), "skip", "UTC", True)
    assert cfg.alerts == AlertsConfig(webhook="https://hooks.example.com/services/T0/B0/s3cr3t",
                                      command="notify-send headrace", on=("run_failed", "sla_missed"),
                                      retries=5, timeout_seconds=2.5)
    rows = {key: (value, origin) for key, value, origin in cfg.explain()}
    assert rows["alerts.webhook"] == ("https://hooks.example.com/***", "headrace.toml via $HR_HOOK")
    assert rows["schedules.daily.cron"] == ("0 6 * * *", "headrace.toml")
    assert rows["schedules.hourly.timezone"] == ("UTC", "default")
    assert "s3cr3t" not in repr(cfg.explain())
    prod = load_config(tmp_path, profile="prod")
    assert prod.schedules["daily"].cron == "0 5 * * *" and prod.schedules["daily"].deadline == time(7, 30)
    assert prod.schedules["hourly"].enabled is False
    assert {k: o for k, _, o in prod.explain()}["schedules.daily.cron"] == "profile prod"


def test_alerts_default_and_switched_off(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, OPS), profile="quiet")  # no $HR_HOOK, command emptied
    assert cfg.alerts is None
    assert not any(key.startswith("alerts.") for key, _, _ in cfg.explain())
    bare = load_config(write(tmp_path / "bare", ""))
    assert bare.alerts is None and dict(bare.schedules) == {}
    assert AlertsConfig(command="x").on == ALERT_KINDS and AlertsConfig(command="x").retries == 3


@pytest.mark.parametrize(
    ("body", "message", "line"),
    [
        ('[schedules.daily]\ncron = "0 6 * *"\n', "schedules.daily.cron: '0 6 * *' is not a valid cron expression", 2),
        ('[schedules.daily]\ncron = "0 25 * * *"\n', "schedules.daily.cron: '0 25 * * *' is not a valid cron", 2),
        ('[schedules.daily]\ncron = "0 6 * * * *"\n', "schedules.daily.cron", 2),
        ('[schedules.daily]\nselect = ["a"]\n', "schedules.daily.cron is required", 1),
        ('[schedules.d]\ncron = "@daily"\ncatchup = "al"\n', "Unknown catchup policy 'al'. Did you mean 'all'?", 3),
        ('[schedules.d]\ncron = "@daily"\ntimezone = "Europe/Pari"\n', "Did you mean 'Europe/Paris'?", 3),
        ('[schedules.d]\ncron = "@daily"\nmax_duration = "30 fortnights"\n', "'30 fortnights' is not a duration", 3),
        ('[schedules.d]\ncron = "@daily"\nmax_duration = 0\n', "not a positive duration", 3),
        ('[schedules.d]\ncron = "@daily"\ndeadline = "25:00"\n', "'25:00' is not a time of day", 3),
        ('[schedules.d]\ncron = "@daily"\ncrn = 1\n', "unknown key 'crn' in [schedules.d]. Did you mean 'cron'?", 3),
        ('[schedules.d]\ncron = "@daily"\nenabled = "yes please"\n', "schedules.d.enabled must be true or false", 3),
        ('[schedules."a b"]\ncron = "@daily"\n', "invalid name 'a b'", 1),
        ('schedules = 3\n', "schedules must be a table of [schedules.NAME] tables", 1),
        ('[alerts]\non = ["run_faild"]\ncommand = "x"\n', "Unknown alert kind 'run_faild'. Did you mean 'run_failed'?", 2),
        ('[alerts]\nwebhook = "hooks.slack.com/x"\n', "is not an http(s) URL", 2),
        ('[alerts]\non = ["run_failed"]\n', "[alerts] sets neither webhook nor command", 1),
        ('[alerts]\ncommand = "x"\ntimeout_seconds = 0\n', "alerts.timeout_seconds must be a number of seconds > 0", 3),
        ('[profiles.p.schedules.d]\ncron = "nope"\n', "profiles.p.schedules.d.cron: 'nope' is not a valid cron", 2),
    ],
)
def test_schedule_and_alert_errors(tmp_path: Path, body: str, message: str, line: int | None) -> None:
    err = error_for(tmp_path, body)
    assert message in err.message
    assert err.line == line
    assert err.path == str(tmp_path / CONFIG_FILE)
    assert_clean(err)


def test_invalid_cron_hint_and_referenced_cron_in_other_profile(tmp_path: Path) -> None:
    err = error_for(tmp_path, '[schedules.nightly]\ncron = "every night"\n')
    assert err.message.startswith("headrace.toml: schedules.nightly.cron:")
    assert "minute hour day-of-month month day-of-week" in (err.hint or "")
    # A cron from the environment in an unselected profile is not judged without its env.
    cfg = load_config(write(tmp_path / "p", '[profiles.p.schedules.d]\ncron = "${HR_TEST_VAR}"\n'))
    assert dict(cfg.schedules) == {}


@pytest.mark.parametrize(("text", "seconds"), [("90s", 90), ("30m", 1800), ("1h30m", 5400), ("2 h", 7200),
                                                ("1d", 86400), ("250ms", 0.25), (45, 45), (1.5, 1.5)])
def test_parse_duration(text: object, seconds: float) -> None:
    assert parse_duration(text).total_seconds() == seconds


SPARK = """
name = "p"
engine = "spark"
[spark]
master = "local[2]"
start_timeout_seconds = 30
[spark.conf]
"spark.executor.memory" = "2g"
"spark.sql.adaptive.enabled" = true
"spark.sql.shuffle.partitions" = 16

[profiles.cluster.spark]
master = "spark://master:7077"
[profiles.cluster.spark.conf]
"spark.executor.memory" = "8g"
"""


def test_spark_section_and_conf_merge_key_by_key(tmp_path: Path) -> None:
    root = write(tmp_path, SPARK)
    base = load_config(root)
    assert base.engine == "spark"
    assert base.spark.master == "local[2]"
    assert base.spark.start_timeout_seconds == 30
    assert base.spark.conf == {"spark.executor.memory": "2g", "spark.sql.adaptive.enabled": "true",
                               "spark.sql.shuffle.partitions": "16"}
    cluster = load_config(root, profile="cluster")
    assert cluster.spark.master == "spark://master:7077"
    # the profile changed one Spark setting; the others stay
    assert cluster.spark.conf == {"spark.executor.memory": "8g", "spark.sql.adaptive.enabled": "true",
                                  "spark.sql.shuffle.partitions": "16"}
    assert load_config(root, overrides={"engine": "duckdb"}).engine == "duckdb"
    origins = {key: origin for key, _, origin in cluster.explain()}
    assert set(origins["spark.conf"].split(", ")) == {"headrace.toml", "profile cluster"}
    assert origins["spark.master"] == "profile cluster"


def test_spark_write_and_local_threshold_settings(tmp_path: Path) -> None:
    base = load_config(write(tmp_path, 'name = "p"\n'))
    assert base.spark.optimize_write is True and base.spark.local_threshold == 64 * 1024**2
    cfg = load_config(write(tmp_path / "b", 'name = "p"\n[spark]\noptimize_write = false\nlocal_threshold = 0\n'))
    assert cfg.spark.optimize_write is False and cfg.spark.local_threshold == 0
    assert load_config(tmp_path / "b", overrides={"spark.local_threshold": "1GB"}).spark.local_threshold == 1024**3
    err = error_for(tmp_path / "c", 'name = "p"\n[spark]\nlocal_threshold = "lots"\n')
    assert_clean(err)
    assert "local_threshold" in err.message


def test_spark_bad_settings_are_clear(tmp_path: Path) -> None:
    err = error_for(tmp_path, 'name = "p"\n[spark]\nremote = "http://x:15002"\n')
    assert_clean(err)
    assert "Spark Connect" in err.message and "sc://" in (err.hint or "")
    err = error_for(tmp_path / "b", 'name = "p"\n[spark]\nmastr = "local"\n')
    assert "mastr" in err.message and "master" in err.message
    err = error_for(tmp_path / "c", 'name = "p"\nengine = "sparks"\n')
    assert "sparks" in err.message and "spark" in err.message
