import pickle
from pathlib import Path

import pytest

from ingestion import registry
from tests.sourcefiles import scratch_settings
from tributary.settings import PROJECT_ROOT, ConfigurationError, Settings, get_settings


def test_defaults_live_under_the_data_dir(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    assert settings.sources_path == PROJECT_ROOT / "sources.yml"
    assert registry.sql_url("shop", settings).render_as_string(False) == (
        f"sqlite:///{tmp_path / 'shop.sqlite'}"
    )
    assert settings.warehouse == tmp_path / "warehouse.duckdb"
    assert settings.pipelines_dir == tmp_path / "pipelines"


def test_environment_overrides_each_location(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("TRIBUTARY_WAREHOUSE_PATH", str(tmp_path / "w.duckdb"))
    monkeypatch.setenv("TRIBUTARY_SOURCES_FILE", str(tmp_path / "sources.yml"))
    (tmp_path / "sources.yml").write_text((PROJECT_ROOT / "sources.yml").read_text())
    monkeypatch.setenv("TRIBUTARY_SHOP_URL", "postgresql://reader:s3cret@db/shop")
    settings = Settings()
    assert settings.warehouse == tmp_path / "w.duckdb"
    assert settings.sources_path == tmp_path / "sources.yml"
    url = registry.sql_url("shop", settings)
    assert url.render_as_string(False) == "postgresql+psycopg://reader:s3cret@db/shop"
    assert "s3cret" not in repr(settings) and "s3cret" not in str(url)


def test_a_bad_api_url_names_the_setting(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SOURCES__PAYMENTS__TOKEN", "token")
    settings = scratch_settings(tmp_path, api="ftp://example")
    with pytest.raises(
        ConfigurationError,
        match=r"^sources\.payments: client\.base_url: must be an http\(s\) URL, "
        r"got 'ftp://example'$",
    ):
        registry.build("payments", settings)


def test_smtp_without_recipients_is_refused_by_name() -> None:
    with pytest.raises(ValueError, match="TRIBUTARY_ALERT_EMAIL_TO"):
        Settings(smtp_host="127.0.0.1")


def test_invalid_settings_are_named_without_the_secrets_read(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """pydantic's error holds every setting read; the one raised instead holds none."""
    secrets = ["db-s3cret", "smtp-s3cret", "hook-s3cret"]
    monkeypatch.setenv("TRIBUTARY_SHOP_URL", f"postgresql://reader:{secrets[0]}@db/shop")
    monkeypatch.setenv("TRIBUTARY_SMTP_HOST", "127.0.0.1")
    monkeypatch.setenv("TRIBUTARY_SMTP_PASSWORD", secrets[1])
    monkeypatch.setenv("TRIBUTARY_SLACK_WEBHOOK_URL", f"https://hooks.example/{secrets[2]}")
    get_settings.cache_clear()
    try:
        with pytest.raises(ConfigurationError) as raised:
            get_settings()
    finally:
        get_settings.cache_clear()
    message = str(raised.value)
    assert message.startswith(
        "invalid settings: TRIBUTARY_ALERT_EMAIL_TO: TRIBUTARY_SMTP_HOST is set but no recipient"
    )
    assert raised.value.__context__ is None and raised.value.__cause__ is None
    kept = pickle.dumps(raised.value)  # as Prefect keeps a failed run's result
    for secret in secrets:
        assert secret not in message and secret.encode() not in kept
