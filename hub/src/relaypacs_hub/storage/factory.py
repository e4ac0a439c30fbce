"""Build the hub's object store and upload store from settings: local folders or an S3 bucket."""

from __future__ import annotations

from minio import Minio

from relaypacs_hub.config import HubSettings
from relaypacs_hub.storage.base import ObjectStore
from relaypacs_hub.storage.local import LocalObjectStore
from relaypacs_hub.storage.s3 import S3ObjectStore, S3UploadStore, make_client
from relaypacs_hub.storage.uploads import LocalUploadStore


def _client(settings: HubSettings) -> Minio:
    return make_client(
        settings.s3_endpoint,
        settings.s3_access_key,
        settings.s3_secret_key.get_secret_value(),
        secure=settings.s3_secure,
        region=settings.s3_region,
    )


def build_object_store(settings: HubSettings) -> ObjectStore:
    """Where DICOM bytes live. With S3, ``object_store_dir`` only holds the local staging folder."""
    if settings.object_store == "s3":
        return S3ObjectStore(
            _client(settings),
            settings.s3_bucket,
            prefix=settings.s3_prefix,
            staging=settings.resolved_object_store_dir / ".staging",
        )
    return LocalObjectStore(settings.resolved_object_store_dir)


def build_upload_store(settings: HubSettings) -> LocalUploadStore | S3UploadStore:
    """Where unfinished tus uploads live. With S3, ``upload_dir`` holds staging and a read cache."""
    if settings.object_store == "s3":
        return S3UploadStore(
            _client(settings),
            settings.s3_bucket,
            prefix=settings.s3_prefix,
            local_dir=settings.resolved_upload_dir,
        )
    return LocalUploadStore(settings.resolved_upload_dir)
