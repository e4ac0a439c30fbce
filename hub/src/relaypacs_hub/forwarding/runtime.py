"""Delivery in one hub process: destinations, their limits, the rules and the router.

Built at start by ``create_app`` (kept in the ``HubRuntime``, ``relaypacs_hub.runtime``) and by
``relaypacs-hub worker``; code that commits a study passes its router
(``commit_study(..., delivery.router)``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import structlog
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from relaypacs_hub.config import HubSettings
from relaypacs_hub.forwarding.base import Destination
from relaypacs_hub.forwarding.config import AnyDestinationConfig, load_destinations
from relaypacs_hub.forwarding.registry import build_destination
from relaypacs_hub.routing.router import Router
from relaypacs_hub.routing.rules import RuleStore, load_rules_file
from relaypacs_hub.storage.base import ObjectStore

log = structlog.get_logger("relaypacs.hub.delivery")


def load_destination_configs(settings: HubSettings) -> list[AnyDestinationConfig]:
    if settings.destinations_file is None:
        return []
    return load_destinations(settings.destinations_file)


@dataclass
class Delivery:
    settings: HubSettings
    sessionmaker: async_sessionmaker[AsyncSession]
    store: ObjectStore
    configs: dict[str, AnyDestinationConfig]
    destinations: dict[str, Destination]
    rules: RuleStore
    router: Router
    wake_worker: list[object] = field(default_factory=list)

    @property
    def limits(self) -> dict[str, int]:
        return {name: c.max_concurrent_jobs for name, c in self.configs.items()}

    @property
    def rules_file_managed(self) -> bool:
        return getattr(self.settings, "rules_file", None) is not None

    async def import_rules_file(self) -> tuple[int, bool] | None:
        """Load the rules file into the database (no-op when unchanged): (version, changed)."""
        path = getattr(self.settings, "rules_file", None)
        if path is None:
            return None
        rules = load_rules_file(path)
        rules.check_destinations(self.destinations)
        stored, changed = await self.rules.save(rules, f"file:{path}")
        if changed:
            log.info("rules_imported", version=stored.version, file=str(path))
        return stored.version, changed

    def wake(self) -> None:
        for wake in self.wake_worker:
            if callable(wake):
                wake()

    async def aclose(self) -> None:
        for dest in self.destinations.values():
            await dest.aclose()


async def start_delivery(
    settings: HubSettings,
    sessionmaker: async_sessionmaker[AsyncSession],
    store: ObjectStore,
    configs: list[AnyDestinationConfig] | None = None,
    destinations: dict[str, Destination] | None = None,
) -> Delivery:
    """Build destinations (unless given) and import the rules file, refusing a bad one."""
    configs = configs if configs is not None else load_destination_configs(settings)
    if destinations is None:
        destinations = {c.name: build_destination(c) for c in configs}
    rules = RuleStore(sessionmaker)
    delivery = Delivery(
        settings=settings,
        sessionmaker=sessionmaker,
        store=store,
        configs={c.name: c for c in configs},
        destinations=destinations,
        rules=rules,
        router=Router(sessionmaker, store, sorted(destinations), rules),
    )
    await delivery.import_rules_file()
    return delivery
