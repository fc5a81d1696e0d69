"""A real Prefect stack for deployment tests, started once per session: `prefect server start`
on a free loopback port with its own PREFECT_HOME, `tributary server-setup`, `prefect deploy
--all`, and a process worker — the commands the README gives users — against a small sample
shop whose payments API is served on loopback, and a webhook receiver for alerts."""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from demo.api import serve_in_background
from demo.generate import generate
from demo.paths import shop_sqlite_path
from tests.receivers import webhook_receiver
from tributary.settings import PROJECT_ROOT, Settings

BIN = Path(sys.executable).parent
ORDERS = 300


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Stack:
    env: dict[str, str]
    settings: Settings
    api_url: str
    token: str
    alerts: list[dict[str, Any]]
    logs: Path
    processes: list[subprocess.Popen] = field(default_factory=list)

    def cli(self, *args: str, timeout: float = 600, **env: str) -> subprocess.CompletedProcess:
        """Run a command as a user would, in the project directory, against this server."""
        return subprocess.run(
            args,
            cwd=PROJECT_ROOT,
            env={**self.env, **env},
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def prefect(self, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
        result = self.cli(str(BIN / "prefect"), "--no-prompt", *args, timeout=timeout)
        assert result.returncode == 0, f"prefect {' '.join(args)}:\n{result.stdout}{result.stderr}"
        return result


def _wait_healthy(url: str, server: subprocess.Popen, log: Path, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert server.poll() is None, f"prefect server exited:\n{log.read_text()[-3000:]}"
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise AssertionError(f"prefect server not healthy after {timeout} s:\n{log.read_text()}")


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    root = tmp_path_factory.mktemp("stack")
    data = root / "data"
    settings = Settings(data_dir=data)
    generate(f"sqlite:///{shop_sqlite_path(settings)}", settings.demo_api_db, orders=ORDERS, seed=5)
    token = secrets.token_urlsafe(16)
    port = _free_port()
    api = f"http://127.0.0.1:{port}/api"
    with (
        serve_in_background(settings.demo_api_db, token) as api_url,
        webhook_receiver() as (hook_url, alerts),
    ):
        env = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith(("PREFECT_", "TRIBUTARY_", "SOURCES__"))
        }
        env.update(
            PREFECT_HOME=str(root / "prefect"),
            PREFECT_API_URL=api,
            PREFECT_UI_URL=f"http://127.0.0.1:{port}",
            PREFECT_SERVER_ANALYTICS_ENABLED="false",
            PREFECT_LOGGING_LEVEL="INFO",
            TRIBUTARY_DATA_DIR=str(data),
            TRIBUTARY_PAYMENTS_API_URL=api_url,
            TRIBUTARY_FX_API_URL=api_url,
            TRIBUTARY_SLACK_WEBHOOK_URL=hook_url,
            SOURCES__PAYMENTS__TOKEN=token,
            DBT_LOG_LEVEL="warn",
        )
        stack = Stack(env, settings, api_url, token, alerts, root / "logs")
        stack.logs.mkdir()
        server_log = stack.logs / "server.log"
        with server_log.open("w") as out:
            server = subprocess.Popen(
                [
                    str(BIN / "prefect"),
                    "server",
                    "start",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(port),
                ],
                cwd=PROJECT_ROOT,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        stack.processes.append(server)
        try:
            _wait_healthy(api, server, server_log)
            setup = stack.cli(str(BIN / "tributary"), "server-setup")
            assert setup.returncode == 0, setup.stdout + setup.stderr
            stack.prefect("deploy", "--all")
            # The tests trigger runs themselves. A schedule left on fires on the quarter hour
            # and runs `elt` from this checkout in the middle of other tests (its dbt build
            # rewrote dbt_project/target/ under a publishing test: "another dbt invocation").
            stack.prefect("deployment", "schedule", "pause", "--all")
            worker_log = stack.logs / "worker.log"
            with worker_log.open("w") as out:
                stack.processes.append(
                    subprocess.Popen(
                        [str(BIN / "prefect"), "worker", "start", "--pool", "tributary"],
                        cwd=root,  # the deployments' pull step, not the cwd, finds the project
                        env=env,
                        stdout=out,
                        stderr=subprocess.STDOUT,
                    )
                )
            yield stack
        finally:
            for process in reversed(stack.processes):
                process.terminate()
                try:
                    process.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    process.kill()
