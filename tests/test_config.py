"""Unit tests of Settings.from_env (config.py), always with an explicit ``env`` mapping."""

from __future__ import annotations

import dataclasses

import pytest

from realtime_server.config import ALL_VARIABLES, SECRET_FIELDS, VARIABLES, Settings
from realtime_server.errors import ConfigError

JWT_SECRET = "jwt-secret-value-0123456789abcdef"
API_KEY = "api-key-value-0123456789"
REDIS_PASSWORD = "redis-pass-4f8e1c"
DB_PASSWORD = "pg-pass-91b2d7"
SECRETS = {
    "REALTIME_JWT_SECRET": JWT_SECRET,
    "REALTIME_API_KEY": API_KEY,
    "REALTIME_REDIS_URL": f"redis://:{REDIS_PASSWORD}@redis.internal:6379/0",
    "REALTIME_DATABASE_URL": f"postgresql://rt:{DB_PASSWORD}@db.internal/rt",
    "REALTIME_OUTBOX_URL": f"postgresql://app:{DB_PASSWORD}@db.internal/app",
}
SECRET_TEXTS = (JWT_SECRET, API_KEY, REDIS_PASSWORD, DB_PASSWORD)


def test_defaults() -> None:
    s = Settings.from_env(env={})
    assert s == Settings()
    assert (s.host, s.port) == ("127.0.0.1", 8000)
    assert (s.api_host, s.api_port) == ("127.0.0.1", 8001)
    assert s.jwt_secret is None and s.jwt_public_key is None and s.jwt_algorithms is None
    assert s.jwt_audience is None and s.jwt_issuer is None
    assert s.jwt_max_lifetime == 86400
    assert s.api_key is None and s.redis_url is None and s.database_url is None
    assert s.redis_prefix == "rt:"
    assert s.sqlite_path == "./realtime-events.db"
    assert s.allowed_origins is None and s.origins() is None
    assert s.log_level == "INFO"
    assert s.api_base_url() == "http://127.0.0.1:8001"


def test_documented_defaults_match_the_fields() -> None:
    """Each variable's documented default (``--help``) is the field's default."""
    converted = Settings.from_env(env={v.name: v.default for v in VARIABLES if v.default})
    assert converted == Settings()
    assert {v.field for v in ALL_VARIABLES} == {f.name for f in dataclasses.fields(Settings)}
    assert {v.field for v in ALL_VARIABLES} - {v.field for v in VARIABLES} == {"worker_id"}


def test_env_mapping_is_the_only_source(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REALTIME_PORT", "1234")
    assert Settings.from_env(env={}).port == 8000
    assert Settings.from_env().port == 1234


def test_values_are_converted() -> None:
    s = Settings.from_env(
        env={
            "REALTIME_PORT": "9000",
            "REALTIME_API_PORT": "0",
            "REALTIME_JWT_LEEWAY": "2.5",
            "REALTIME_JWT_MAX_LIFETIME": "3600",
            "REALTIME_PING_INTERVAL": "0",
            "REALTIME_MAX_CONNECTIONS_PER_USER": "0",
            "REALTIME_LOG_LEVEL": "debug",
            "REALTIME_JWT_AUDIENCE": "realtime",
            "REALTIME_ALLOWED_ORIGINS": "https://app.example, http://localhost:3000",
        }
    )
    assert (s.port, s.api_port) == (9000, 0)
    assert s.jwt_leeway == 2.5 and s.jwt_max_lifetime == 3600.0
    assert s.ping_interval == 0.0 and s.max_connections_per_user == 0
    assert s.jwt_audience == "realtime"
    assert s.origins() == ["https://app.example", "http://localhost:3000"]


def test_empty_value_means_unset() -> None:
    s = Settings.from_env(env={"REALTIME_PORT": "", "REALTIME_JWT_SECRET": ""})
    assert s.port == 8000 and s.jwt_secret is None


def test_overrides_win_over_env() -> None:
    s = Settings.from_env(
        env={"REALTIME_PORT": "9000", "REALTIME_HOST": "10.0.0.5"},
        overrides={"port": "9100", "host": None},
    )
    assert s.port == 9100
    assert s.host == "10.0.0.5"  # a None override leaves the variable alone


def test_overrides_are_validated() -> None:
    with pytest.raises(ConfigError, match=r"^REALTIME_PORT"):
        Settings.from_env(env={}, overrides={"port": "http"})


def test_ipv6_api_host_in_base_url() -> None:
    s = Settings.from_env(env={"REALTIME_API_HOST": "::1", "REALTIME_API_PORT": "8100"})
    assert s.api_base_url() == "http://[::1]:8100"
    explicit = Settings.from_env(env={"REALTIME_API_URL": "http://api.internal:9/"})
    assert explicit.api_base_url() == "http://api.internal:9"


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("REALTIME_PORT", "http"),
        ("REALTIME_PORT", "80.5"),
        ("REALTIME_PORT", "-1"),
        ("REALTIME_PORT", "65536"),
        ("REALTIME_API_PORT", "eighty"),
        ("REALTIME_API_PORT", "99999"),
        ("REALTIME_JWT_LEEWAY", "soon"),
        ("REALTIME_JWT_LEEWAY", "-1"),
        ("REALTIME_JWT_LEEWAY", "nan"),
        ("REALTIME_JWT_LEEWAY", "inf"),
        ("REALTIME_JWT_MAX_LIFETIME", "0"),
        ("REALTIME_JWT_MAX_LIFETIME", "1e400"),
        ("REALTIME_JWT_MAX_LENGTH", "10"),
        ("REALTIME_JWT_MAX_LENGTH", "8k"),
        ("REALTIME_MAX_MESSAGE_SIZE", "100"),
        ("REALTIME_CONNECT_TIMEOUT", "0"),
        ("REALTIME_PING_INTERVAL", "-5"),
        ("REALTIME_PONG_TIMEOUT", "0"),
        ("REALTIME_EXPIRY_GRACE", "later"),
        ("REALTIME_MAX_CHANNELS", "0"),
        ("REALTIME_MAX_CONNECTIONS_PER_USER", "-1"),
        ("REALTIME_OUTBOX_BYTES", "1"),
        ("REALTIME_RATE_LIMIT", "0"),
        ("REALTIME_RATE_BURST", "0.5"),
        ("REALTIME_RATE_STRIKES", "0"),
        ("REALTIME_SHUTDOWN_TIMEOUT", "NaN"),
        ("REALTIME_LOG_LEVEL", "LOUD"),
        ("REALTIME_ALLOWED_ORIGINS", "app.example"),
        ("REALTIME_ALLOWED_ORIGINS", "https://app.example/"),
        ("REALTIME_NAMESPACES", "{"),
        ("REALTIME_NAMESPACES", "[1]"),
    ],
)
def test_malformed_value_names_the_variable(name: str, value: str) -> None:
    with pytest.raises(ConfigError) as info:
        Settings.from_env(env={**SECRETS, name: value})
    message = str(info.value)
    assert message.startswith(name), message
    assert "\n" not in message
    for secret in SECRET_TEXTS:
        assert secret not in message
    assert isinstance(info.value, ValueError)


def test_no_token_key_refuses_to_start() -> None:
    """from_env accepts a missing key; building the verifier (server start) refuses it."""
    from realtime_server.app import build_verifier

    with pytest.raises(ConfigError, match="REALTIME_JWT_SECRET"):
        build_verifier(Settings.from_env(env={}))


def test_secret_fields() -> None:
    assert {"jwt_secret", "api_key", "redis_url", "database_url"} <= SECRET_FIELDS


def test_secrets_not_in_repr() -> None:
    s = Settings.from_env(env=SECRETS)
    assert s.jwt_secret == JWT_SECRET and s.api_key == API_KEY
    for text in (repr(s), str(s)):
        for secret in SECRET_TEXTS:
            assert secret not in text


def test_secrets_not_in_public() -> None:
    public = Settings.from_env(env=SECRETS).public()
    for secret in SECRET_TEXTS:
        assert secret not in repr(public)
    for name in SECRET_FIELDS:
        assert public[name] == "set"
    unset = Settings.from_env(env={}).public()
    for name in SECRET_FIELDS:
        assert unset[name] == "unset"


def test_public_shows_everything_else() -> None:
    s = Settings.from_env(env={**SECRETS, "REALTIME_PORT": "9000"})
    public = s.public()
    assert set(public) == {f.name for f in dataclasses.fields(Settings)}
    assert public["port"] == 9000 and public["redis_prefix"] == "rt:"


def test_settings_are_frozen() -> None:
    s = Settings.from_env(env={})
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.port = 1  # type: ignore[misc]


@pytest.mark.parametrize(
    ("changes", "variable"),
    [
        ({"port": 70000}, "REALTIME_PORT"),
        ({"ping_interval": -1.0}, "REALTIME_PING_INTERVAL"),
        ({"jwt_leeway": float("nan")}, "REALTIME_JWT_LEEWAY"),
        ({"max_channels": "128"}, "REALTIME_MAX_CHANNELS"),
        ({"events_enabled": "yes"}, "REALTIME_EVENTS_ENABLED"),
        ({"host": None}, "REALTIME_HOST"),
        ({"namespaces_json": "[]"}, "REALTIME_NAMESPACES"),
        ({"workers": 2}, "REALTIME_WORKERS"),
        (
            {
                "outbox_url": "postgresql://127.0.0.1/app",
                "redis_url": "redis://127.0.0.1:6379/0",
                "outbox_idle_timeout": 2.0,  # not above REDIS_TIMEOUT's 2 s
            },
            "REALTIME_OUTBOX_IDLE_TIMEOUT",
        ),
    ],
)
def test_direct_construction_and_replace_are_validated(
    changes: dict[str, object], variable: str
) -> None:
    """Validation lives in the settings object: neither Settings(...) nor replace()
    can skip what from_env checks."""
    with pytest.raises(ConfigError, match=f"^{variable}"):
        Settings(**changes)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=f"^{variable}"):
        dataclasses.replace(Settings(), **changes)


def test_outbox_idle_timeout_only_checked_against_a_redis_timeout_in_use() -> None:
    outbox = {"outbox_url": "postgresql://127.0.0.1/app", "outbox_idle_timeout": 2.0}
    assert Settings(**outbox).outbox_idle_timeout == 2.0  # type: ignore[arg-type]
    redis = {"redis_url": "redis://127.0.0.1:6379/0", "redis_timeout": 1.5}
    assert Settings(**outbox, **redis).outbox_idle_timeout == 2.0  # type: ignore[arg-type]


def test_namespaces_parsed_once() -> None:
    s = Settings.from_env(env={"REALTIME_NAMESPACES": '{"chat": {"allow_publish": true}}'})
    assert s.namespaces() is s.namespaces()
    assert s.namespaces().resolve("chat:1")[1].allow_publish


def test_worker_node_names_get_the_worker_index() -> None:
    """serve --workers 2 --node-name X: workers are X-w0 and X-w1, not both X."""
    env = {"REALTIME_NODE_NAME": "X", "REALTIME_WORKER_ID": "1"}
    assert Settings.from_env(env=env).node() == "X-w1"
    assert Settings.from_env(env={}, overrides={"node_name": "Y"}).node() == "Y"


def test_options_have_named_placeholders() -> None:
    """--help shows what a value is (PORT, SECONDS...), and the namespaces option is
    --namespaces; secrets and internal variables are not options."""
    options = {v.option: v for v in VARIABLES if v.option}
    assert options["--port"].metavar == "PORT"
    assert options["--ping-interval"].metavar == "SECONDS"
    assert "--namespaces" in options and "--namespaces-json" not in options
    assert all(v.option is None for v in VARIABLES if v.secret)
    assert sum(v.metavar == "VALUE" for v in VARIABLES if v.option) == 0
