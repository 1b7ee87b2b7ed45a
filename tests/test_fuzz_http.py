"""Property-based fuzzing of the HTTP API from its own OpenAPI schema (schemathesis): every route,
with bodies, paths and queries generated from the schema and beyond it, answers a 4xx/503 that
says why or a 2xx, never a 500, and the server is still up afterwards. Examples are bounded so the
run stays well under a minute in CI."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings

from streamer.app import create_app
from streamer.settings import Settings
from tests.conftest import ServerThread

pytestmark = pytest.mark.timeout(120)


def _app(data: Path) -> Any:
    # No SAM2 (routes that need it answer 503 not_ready) and no VLM: the fuzz is of the API's
    # edges (parsing, validation, ids, limits), where a 500 would come from.
    return create_app(
        Settings(data_dir=data, api_docs=True), vision_model=None, reasoner=None, load_vision=False
    )


# One real server (uvicorn in a thread) for the whole module: the fuzz goes over real HTTP, and
# the last test sees whether that same server is still up.
SERVER = ServerThread(_app(Path(tempfile.mkdtemp(prefix="fmu-fuzz-http-"))))
SERVER.__enter__()
schema = schemathesis.openapi.from_url(f"{SERVER.base_url}/openapi.json")


def teardown_module() -> None:
    SERVER.__exit__(None, None, None)


@schema.parametrize()
@settings(
    max_examples=10,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=True,
)
def test_no_route_answers_500(case: Any) -> None:
    response = case.call()
    assert response.status_code < 500 or response.status_code == 503, (
        f"{case.method} {case.formatted_path} -> {response.status_code}: {response.text[:300]}"
    )


def test_the_server_is_up_after_the_fuzz() -> None:
    assert httpx.get(f"{SERVER.base_url}/healthz").status_code == 200
    assert httpx.get(f"{SERVER.base_url}/api/capabilities").status_code == 200
