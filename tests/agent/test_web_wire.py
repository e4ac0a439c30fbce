"""The LAN API's declared bodies (relaypacs_agent.web.wire): a field with no value is left out,
not sent as null, and the OpenAPI document the upload app's types come from says so."""

from __future__ import annotations

from relaypacs_agent.web import wire


def test_an_omittable_field_is_left_out_not_null() -> None:
    assert wire.Disk().model_dump(mode="json") == {}
    full = wire.Disk(free_bytes=5, reserve_bytes=1, refusing=False)
    assert full.model_dump(mode="json") == {"free_bytes": 5, "reserve_bytes": 1, "refusing": False}
    totals = wire.AgentTotals(
        instances=0,
        instances_by_state={},
        duplicates=0,
        quarantined=0,
        quarantine_reasons={},
        studies=0,
        studies_by_state={},
    )
    assert "conformance_findings" not in totals.model_dump(mode="json")
    # A nullable field that is not omittable is sent as null.
    hub = wire.HubContact(reachable=False, last_contact_at=None).model_dump(mode="json")
    assert hub == {"reachable": False, "last_contact_at": None}


def test_the_document_declares_every_body_and_optional_fields_without_null() -> None:
    schemas = wire.openapi()["components"]["schemas"]
    for model in (*wire.ANSWERS, *wire.REQUESTS):
        assert model.__name__ in schemas
    disk = schemas["Disk"]
    assert "required" not in disk
    assert disk["properties"]["free_bytes"] == {"title": "Free Bytes", "type": "integer"}
    assert "conformance_findings" not in schemas["AgentTotals"]["required"]
    assert schemas["ServerBatch"]["properties"]["service_level"]["enum"] == ["stat", "routine"]
    assert schemas["ServerBatch"]["additionalProperties"] is False
