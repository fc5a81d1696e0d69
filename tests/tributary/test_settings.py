from pathlib import Path

import pytest
from pydantic import ValidationError

from tributary.settings import Settings


def test_defaults_live_under_the_data_dir(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    assert settings.shop_connection_url == f"sqlite:///{tmp_path / 'shop.sqlite'}"
    assert settings.warehouse == tmp_path / "warehouse.duckdb"
    assert settings.pipelines_dir == tmp_path / "pipelines"


def test_environment_overrides_each_location(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("TRIBUTARY_WAREHOUSE_PATH", str(tmp_path / "w.duckdb"))
    monkeypatch.setenv("TRIBUTARY_SHOP_URL", "postgresql://reader:s3cret@db/shop")
    settings = Settings()
    assert settings.warehouse == tmp_path / "w.duckdb"
    assert settings.shop_connection_url == "postgresql://reader:s3cret@db/shop"
    assert "s3cret" not in repr(settings)


def test_a_bad_api_url_names_the_setting() -> None:
    with pytest.raises(ValidationError, match="payments_api_url"):
        Settings(payments_api_url="ftp://example")


def test_smtp_without_recipients_is_refused_by_name() -> None:
    with pytest.raises(ValueError, match="TRIBUTARY_ALERT_EMAIL_TO"):
        Settings(smtp_host="127.0.0.1")
