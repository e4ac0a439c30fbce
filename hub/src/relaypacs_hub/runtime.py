"""The hub's one runtime object: what serving a request needs, built once by ``create_app``.

The API reaches it as ``request.app.state.hub`` (``State`` in ``api/deps.py``); the forwarding
worker of ``relaypacs-hub worker`` runs on its own ``Delivery`` without it.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from relaypacs_hub.auth.service import AuthService
from relaypacs_hub.config import HubSettings
from relaypacs_hub.forwarding.runtime import Delivery
from relaypacs_hub.ingest.tus import TusService
from relaypacs_hub.ratelimit import Limiter
from relaypacs_hub.reports.push import PushSender
from relaypacs_hub.reports.service import FeedSignal
from relaypacs_hub.storage.base import ObjectStore


@dataclass
class HubRuntime:
    settings: HubSettings
    sessionmaker: async_sessionmaker[AsyncSession]
    store: ObjectStore
    delivery: Delivery  # destinations, rules, router, and the wake-up of this process's worker
    tus: TusService
    auth: AuthService
    limiter: Limiter
    reports: FeedSignal  # wakes the agents' report feeds
    push: PushSender

    @property
    def destination_names(self) -> list[str]:
        return sorted(self.delivery.destinations)
