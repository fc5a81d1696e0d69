"""`tributary demo serve`: the sample shop's API stays up on loopback with a token kept in the
data folder, so the deployments' runs work on the sample shop as the README writes them; what
it prints says what to export, never the token."""

from __future__ import annotations

import os
import socket
import sqlite3
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import httpx

from demo.generate import generate
from tributary.settings import PROJECT_ROOT


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_demo_serve_answers_with_the_kept_token_and_prints_no_secret(tmp_path: Path) -> None:
    generate(
        f"sqlite:///{tmp_path / 'shop.sqlite'}",
        tmp_path / "payments_api.sqlite",
        orders=300,
        seed=5,
        end=datetime(2026, 5, 1),
    )
    port = _free_port()
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("TRIBUTARY_", "SOURCES__"))
    }
    env["TRIBUTARY_DATA_DIR"] = str(tmp_path)
    server = subprocess.Popen(
        [str(Path(sys.executable).parent / "tributary"), "demo", "serve", "--port", str(port)],
        cwd=PROJECT_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                httpx.get(f"{url}/payments", timeout=1)
                break
            except httpx.TransportError:
                assert server.poll() is None and time.monotonic() < deadline, "never served"
                time.sleep(0.2)
        token_file = tmp_path / "demo_api_token"
        assert token_file.stat().st_mode & 0o777 == 0o600
        token = token_file.read_text().strip()
        assert len(token) >= 24

        assert httpx.get(f"{url}/payments").status_code == 401
        payments, query = [], {"limit": "100"}
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}) as client:
            while True:
                page = client.get("/payments", params=query).raise_for_status().json()
                payments += [row["payment_id"] for row in page["data"]]
                if page["next_cursor"] is None:
                    break
                query["cursor"] = page["next_cursor"]
        with sqlite3.connect(tmp_path / "payments_api.sqlite") as store:
            held = {row[0] for row in store.execute("select payment_id from payments")}
        assert len(payments) == len(set(payments)) == len(held) > 0
        assert set(payments) == held
    finally:
        server.terminate()
        output, _ = server.communicate(timeout=30)
    assert f"export TRIBUTARY_PAYMENTS_API_URL={url} TRIBUTARY_FX_API_URL={url}" in output
    assert f"export SOURCES__PAYMENTS__TOKEN=$(cat {token_file})" in output
    assert token not in output
