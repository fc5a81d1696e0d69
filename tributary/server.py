"""Everything a Prefect server needs before tributary's deployments run on it, in one step:
the work pool, the warehouse's global concurrency limit, the alerts block and the automations
in ``automations.yaml``. Safe to repeat: what exists is kept or replaced by name."""

from __future__ import annotations

from dataclasses import dataclass, field
from string import Template

import yaml
from prefect.blocks.notifications import CustomWebhookNotificationBlock
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate, WorkPoolCreate
from prefect.events.schemas.automations import AutomationCore
from prefect.exceptions import ObjectNotFound

from tributary.lock import WAREHOUSE_LIMIT
from tributary.settings import PROJECT_ROOT, Settings

WORK_POOL = "tributary"
ALERTS_BLOCK = "tributary-alerts"
AUTOMATIONS_FILE = PROJECT_ROOT / "automations.yaml"


@dataclass
class SetupResult:
    created: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


def load_automations(alerts_block_id: str, stale_after_hours: float) -> list[AutomationCore]:
    """The automations file with its placeholders filled in, validated by Prefect's model."""
    text = Template(AUTOMATIONS_FILE.read_text()).substitute(
        ALERTS_BLOCK_ID=alerts_block_id,
        STALE_AFTER_HOURS=f"{stale_after_hours:g}",
        STALE_AFTER_SECONDS=str(int(stale_after_hours * 3600)),
    )
    return [AutomationCore.model_validate(item) for item in yaml.safe_load(text)["automations"]]


def setup_server(settings: Settings) -> SetupResult:
    """Create what is missing on the server that PREFECT_API_URL points at."""
    result = SetupResult()
    with get_client(sync_client=True) as client:
        try:
            client.read_work_pool(WORK_POOL)
            result.kept.append(f"work pool {WORK_POOL}")
        except ObjectNotFound:
            client.create_work_pool(WorkPoolCreate(name=WORK_POOL, type="process"))
            result.created.append(f"work pool {WORK_POOL} (process)")

        try:
            limit = client.read_global_concurrency_limit_by_name(WAREHOUSE_LIMIT)
            result.kept.append(f"concurrency limit {WAREHOUSE_LIMIT} (limit {limit.limit})")
        except ObjectNotFound:
            client.create_global_concurrency_limit(
                GlobalConcurrencyLimitCreate(name=WAREHOUSE_LIMIT, limit=1)
            )
            result.created.append(f"concurrency limit {WAREHOUSE_LIMIT} (limit 1)")

        url = settings.slack_webhook_url
        if url is None:
            result.skipped.append(
                f"block {ALERTS_BLOCK} and automations: TRIBUTARY_SLACK_WEBHOOK_URL is not set"
            )
            return result
        block = CustomWebhookNotificationBlock(
            name="tributary",
            url=url.get_secret_value(),
            json_data={"text": "{{subject}}\n{{body}}"},
        )
        block_id = block.save(ALERTS_BLOCK, overwrite=True)
        result.created.append(f"block custom-webhook/{ALERTS_BLOCK}")

        for automation in load_automations(str(block_id), settings.stale_after_hours):
            for existing in client.read_automations_by_name(automation.name):
                client.delete_automation(existing.id)
            client.create_automation(automation)
            result.created.append(f"automation {automation.name}")
    return result
