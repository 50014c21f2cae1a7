"""Property-based fuzzing of the real API against its own OpenAPI document (schemathesis + hypothesis):
generated valid and invalid requests for every operation; no answer may be a 5xx, and every answer
must match the document (status code, content type, body schema, headers).

/events/stream is left out: its answer never ends, so no client can validate it as a whole; its
query validation is the same code as /events and is tested in tests/test_api_stream.py.
"""
from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, settings

from harness.api import ApiProcess, Publisher, connect, event


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory):
    srv = ApiProcess(tmp_path_factory.mktemp("fuzz") / "ips.sqlite3", "--max-items", "100",
                    "--recent-events", "500")
    with srv:
        pub = Publisher(srv.collector)
        connect(srv, pub)  # so /stats, /events and /metrics have real content to validate
        pub.events([event(pid=9000 + i, comm=f"fuzz{i}", syscall=("read", "write")[i % 2]) for i in range(50)])
        yield srv
        pub.close()


@pytest.fixture(scope="module")
def api_schema(fuzz_server):
    # An invalid request may be refused with any 4xx the document declares for it (413: too many
    # items), not only schemathesis's default list.
    # /history's range rules span several parameters ('from' before 'to', at most 31 days apart, at most
    # 1440 steps), which OpenAPI cannot state: a request valid parameter by parameter may get its 400.
    config = schemathesis.Config.from_dict({
        "checks": {"negative_data_rejection": {"expected-statuses": [400, 401, 404, 405, 409, 413, 415, 422]}},
        "operations": [{"include-path": "/history", "checks": {"positive_data_acceptance": {
            "expected-statuses": ["2xx", "400"]}}}]})
    return schemathesis.openapi.from_url(fuzz_server.url("/openapi.json"), config=config, timeout=10)


schema = schemathesis.pytest.from_fixture("api_schema").exclude(path="/events/stream")


@schema.parametrize()
@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
def test_api_conforms_to_its_openapi_document(case):
    case.call_and_validate(timeout=10)
