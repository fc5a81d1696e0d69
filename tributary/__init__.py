"""tributary: dlt loads sources into DuckDB, dbt models them, Prefect runs both."""
