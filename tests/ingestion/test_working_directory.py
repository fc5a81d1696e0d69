"""A run started from any folder reads the project's dlt settings (.dlt/config.toml): dlt looks
for them in the working directory unless DLT_PROJECT_DIR says where."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import duckdb
import yaml

from tests.servers import database_with
from tributary.settings import PROJECT_ROOT, Settings

ROWS = 5000


def test_a_run_started_from_another_folder_loads_with_the_projects_dlt_settings(
    tmp_path: Path,
) -> None:
    """From another folder (and no DLT_PROJECT_DIR), dlt ran without the project's settings:
    arrow rows came without their load id, so the first load of a PostgreSQL table failed
    once its rest streamed in ("does not have a column with name _dlt_load_id")."""
    make = (
        "create table orders (order_id integer primary key, status text not null,"
        " updated_at timestamp not null);"
        f"insert into orders select g, 'placed', timestamp '2020-01-01' + g * interval '1 minute'"
        f" from generate_series(1, {ROWS}) g"
    )
    with database_with("postgresql", make) as url:
        sources = tmp_path / "sources.yml"
        declaration = {
            "type": "sql_database",
            "credentials": url,
            "defaults": {"cursor": "updated_at"},
            "tables": {"orders": None},
        }
        sources.write_text(yaml.safe_dump({"sources": {"shop": declaration}}))
        elsewhere = tmp_path / "elsewhere"
        elsewhere.mkdir()
        settings = Settings(data_dir=tmp_path / "data", sources_file=sources)
        environment = {
            key: value for key, value in os.environ.items() if not key.startswith("DLT_")
        }
        environment["PYTHONPATH"] = str(PROJECT_ROOT)
        run = subprocess.run(
            [
                sys.executable,
                "-c",
                "import sys; from pathlib import Path;"
                " from ingestion.pipeline import run_source;"
                " from tributary.settings import Settings;"
                " run_source('shop', Settings(data_dir=Path(sys.argv[1]),"
                " sources_file=Path(sys.argv[2])))",
                str(settings.data_dir),
                str(sources),
            ],
            cwd=elsewhere,
            env=environment,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert run.returncode == 0, run.stderr[-3000:]
    with duckdb.connect(str(settings.warehouse), read_only=True) as warehouse:
        [(rows, keys, stamped)] = warehouse.execute(
            "select count(*), count(distinct order_id), count(_dlt_load_id) from raw_shop.orders"
        ).fetchall()
    assert (rows, keys, stamped) == (ROWS, ROWS, ROWS)
