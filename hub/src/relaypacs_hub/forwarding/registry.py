"""One module per destination type; this maps a parsed config to its implementation."""

from __future__ import annotations

from relaypacs_hub.forwarding.base import Destination
from relaypacs_hub.forwarding.config import (
    AnyDestinationConfig,
    DicomWebDestinationConfig,
    DimseDestinationConfig,
    FolderDestinationConfig,
)


def build_destination(config: AnyDestinationConfig) -> Destination:
    if isinstance(config, FolderDestinationConfig):
        from relaypacs_hub.forwarding.folder import FolderDestination

        return FolderDestination(config)
    if isinstance(config, DicomWebDestinationConfig):
        from relaypacs_hub.forwarding.dicomweb import DicomWebDestination

        return DicomWebDestination(config)
    if isinstance(config, DimseDestinationConfig):
        from relaypacs_hub.forwarding.dimse import DimseDestination

        return DimseDestination(config)
    raise TypeError(f"no destination type for {type(config).__name__}")
