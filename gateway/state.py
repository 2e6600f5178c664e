"""What a gateway process holds while it serves: its settings, worker pool and feature store."""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import Request

from tandem.common.settings import GatewaySettings
from tandem.gateway.drift import DriftMonitor
from tandem.gateway.feature_store import FeatureStore
from tandem.gateway.prediction_cache import PredictionCache
from tandem.gateway.worker_client import WorkerPool


@dataclass(slots=True)
class GatewayState:
    settings: GatewaySettings
    pool: WorkerPool
    features: FeatureStore
    prediction_cache: PredictionCache
    drift: DriftMonitor


def gateway_state(request: Request) -> GatewayState:
    """The state the app's lifespan opened."""
    return request.app.state.tandem
