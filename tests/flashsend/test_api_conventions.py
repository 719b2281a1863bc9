from __future__ import annotations

import pytest
from rest_framework.test import APIClient

pytestmark = pytest.mark.django_db


def test_ping(api: APIClient) -> None:
    response = api.get("/ping")
    assert response.status_code == 200
    assert response.json() == {"message": "pong"}


def test_ready_reports_each_dependency(api: APIClient) -> None:
    response = api.get("/ready")
    assert response.status_code == 200, response.content
    assert response.json() == {
        "status": "ready",
        "checks": {"database": "ok", "cache": "ok", "broker": "ok"},
    }


def test_unknown_api_path_is_json_404(api: APIClient) -> None:
    response = api.get("/api/no/such/thing")
    assert response.status_code == 404
    assert response["Content-Type"] == "application/json"
    assert response.json()["error"] == "No API endpoint at /api/no/such/thing."


def test_unknown_non_api_path_is_an_html_404(api: APIClient) -> None:
    response = api.get("/no/such/page")
    assert response.status_code == 404
    assert response["Content-Type"].startswith("text/html")


def test_wrong_method_is_json_405(api: APIClient) -> None:
    response = api.get("/api/auth/login")
    assert response.status_code == 405
    assert response.json()["code"] == "method_not_allowed"
    assert "GET" in response.json()["error"]


@pytest.mark.urls("tests.flashsend.urls_failing")
def test_server_error_under_api_is_json() -> None:
    client = APIClient(raise_request_exception=False)
    response = client.get("/api/failing")
    assert response.status_code == 500
    assert response["Content-Type"] == "application/json"
    body = response.json()
    assert body["code"] == "server_error"
    assert "simulated" not in body["error"]  # internals are logged, not shown


@pytest.mark.urls("tests.flashsend.urls_failing")
def test_server_error_elsewhere_is_html() -> None:
    client = APIClient(raise_request_exception=False)
    response = client.get("/failing")
    assert response.status_code == 500
    assert response["Content-Type"].startswith("text/html")


def test_openapi_schema_documents_the_endpoints(api: APIClient) -> None:
    response = api.get("/api/schema/", HTTP_ACCEPT="application/json")
    assert response.status_code == 200
    schema = response.json()
    for path in ("/api/auth/register", "/api/auth/login", "/api/auth/refresh", "/api/apikeys"):
        assert path in schema["paths"], path
    assert "ApiKeyAuth" in schema["components"]["securitySchemes"]
    assert "jwtAuth" in schema["components"]["securitySchemes"]


def test_swagger_ui_loads_nothing_from_the_internet(api: APIClient) -> None:
    response = api.get("/api/docs/")
    assert response.status_code == 200
    html = response.content.decode()
    assert "swagger-ui" in html
    assert "cdn." not in html
    assert "https://" not in html.replace("https://swagger.io", "")


def test_metrics_are_exposed(api: APIClient) -> None:
    api.get("/ping")
    response = api.get("/metrics")
    assert response.status_code == 200
    assert b"django_http_requests_total_by_method_total" in response.content
