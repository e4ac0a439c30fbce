"""Bugs schemathesis found in the hub (tests/hub/test_schemathesis.py), pinned as fast tests."""

from __future__ import annotations

from pathlib import Path

from tests.hub.authfix import ADMIN_TOKEN, auth_settings, bearer, hub_client


async def test_job_id_out_of_sql_range_is_422_not_500(tmp_path: Path) -> None:
    async with hub_client(auth_settings(tmp_path)) as (_app, client):
        for method, path in (
            ("GET", "/api/v1/jobs/{}"),
            ("POST", "/api/v1/jobs/{}/retry"),
            ("POST", "/api/v1/jobs/{}/release"),
        ):
            for job_id in (2**63, 17535008605093232640, 0, -1):
                r = await client.request(method, path.format(job_id), headers=bearer(ADMIN_TOKEN))
                assert r.status_code == 422, (method, path, job_id, r.text)
            r = await client.request(method, path.format(2**63 - 1), headers=bearer(ADMIN_TOKEN))
            assert r.status_code == 404, r.text


async def test_upload_options_route_declares_its_path_parameter(tmp_path: Path) -> None:
    async with hub_client(auth_settings(tmp_path)) as (app, client):
        op = app.openapi()["paths"]["/api/v1/uploads/{upload_id}"]["options"]
        assert [p["name"] for p in op["parameters"] if p["in"] == "path"] == ["upload_id"]
        r = await client.options("/api/v1/uploads/" + "a" * 32)
        assert r.status_code == 204
        assert r.headers["Tus-Version"] == "1.0.0"


async def test_job_list_offset_out_of_sql_range_is_422_not_500(tmp_path: Path) -> None:
    async with hub_client(auth_settings(tmp_path)) as (_app, client):
        r = await client.get(
            "/api/v1/jobs", params={"offset": 16928411372943835136}, headers=bearer(ADMIN_TOKEN)
        )
        assert r.status_code == 422, r.text
        r = await client.get(
            "/api/v1/jobs", params={"offset": 2**63 - 1}, headers=bearer(ADMIN_TOKEN)
        )
        assert r.status_code == 200, r.text
        assert r.json()["jobs"] == []


async def test_manifest_size_out_of_sql_range_is_422_not_500(tmp_path: Path) -> None:
    async with hub_client(auth_settings(tmp_path)) as (app, client):
        token = app.state.hub.settings.agent_token
        headers = bearer(token.get_secret_value()) if token else {}
        body = {
            "instances": [
                {
                    "sop_instance_uid": "1.2.3.4",
                    "series_instance_uid": "1.2.3",
                    "sha256": "0" * 64,
                    "size": 2**63,
                }
            ]
        }
        r = await client.post("/api/v1/studies/1.2.3/manifest", json=body, headers=headers)
        assert r.status_code == 422, r.text
        body["instances"][0]["size"] = 2**63 - 1
        r = await client.post("/api/v1/studies/1.2.3/manifest", json=body, headers=headers)
        assert r.status_code == 200, r.text
        assert r.json()["missing"] == ["1.2.3.4"]


async def test_report_ids_and_cursors_beyond_the_columns_are_a_422(tmp_path: Path) -> None:
    async with hub_client(auth_settings(tmp_path)) as (_app, client):
        admin = bearer(ADMIN_TOKEN)
        r = await client.get(f"/api/v1/reports/{2**63 + 5}/content", headers=admin)
        assert r.status_code == 422, r.text
        r = await client.get(f"/api/v1/reports/{2**31}/content", headers=admin)
        assert r.status_code == 422, r.text
        r = await client.get("/api/v1/reports/7/content", headers=admin)
        assert r.status_code == 404, r.text


async def test_analytics_dates_at_the_calendars_edges_are_a_422(tmp_path: Path) -> None:
    async with hub_client(auth_settings(tmp_path)) as (_app, client):
        admin = bearer(ADMIN_TOKEN)
        for path in ("/api/v1/analytics", "/api/v1/analytics/studies.csv"):
            for params in ({"end": "0001-01-01"}, {"start": "9999-12-31", "end": "9999-12-31"}):
                r = await client.get(path, params=params, headers=admin)
                assert r.status_code == 422, (path, params, r.text)
            r = await client.get(
                path, params={"start": "0001-01-01", "end": "0001-01-01"}, headers=admin
            )
            assert r.status_code == 200, (path, r.text)
