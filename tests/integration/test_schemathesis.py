"""schemathesis, a third-party fuzzer, against the served OpenAPI document on real Serve
(workflows enabled, real HTTP).

For every documented operation it generates valid and invalid requests from the
schema; every answer must be documented (status, content type, body schema), no
5xx but the documented 503/504, and no traceback or file path in any body.
Afterwards every listing still answers 200 and every stored run still renders.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from serve_app.ingress.operations import ROUTES
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

# Handlers of the test pools that misbehave on purpose (kill, hang or block their replica); the
# fault tests exercise them. Fuzzing them would only test the fault tests' fixtures again.
# ``record`` appends to a file the request names: never with fuzzed paths (nor the workflows using it).
FAULT_TASK_TYPES = {"hang", "crash", "stall", "block_loop", "flaky", "whoami", "record"}
RECORDING_WORKFLOWS = {"bulk", "slow_child", "parent"}
# Runs the fuzzer starts are cancelled afterwards; waiting on them is bounded here.
MAX_WAIT_S = 2.0
LEAKS = re.compile(r"Traceback|File \"|/site-packages/|\.py\", line")


@pytest.fixture(scope="module")
def served_schema(serve_instance: dict[str, Any]) -> Any:
    schema = schemathesis.openapi.from_url(serve_instance["http"] + "/openapi.json")

    @schema.hook
    def filter_body(context: Any, body: Any) -> bool:
        return not _excluded_body(body)

    @schema.hook
    def filter_path_parameters(context: Any, path_parameters: Any) -> bool:
        return not _excluded_path(path_parameters)

    @schema.hook
    def map_body(context: Any, body: Any) -> Any:
        if isinstance(body, dict) and body.get("wait") is True and isinstance(body.get("wait_timeout_s"), (int, float)):
            body["wait_timeout_s"] = min(body["wait_timeout_s"], MAX_WAIT_S)
        if isinstance(body, dict) and body.get("wait") is True and "wait_timeout_s" not in body:
            body["wait_timeout_s"] = MAX_WAIT_S
        return body

    return schema


def _excluded_body(body: Any) -> bool:
    return isinstance(body, dict) and isinstance(body.get("task_type"), str) and body["task_type"] in FAULT_TASK_TYPES


def _excluded_path(path_parameters: Any) -> bool:
    return isinstance(path_parameters, dict) and path_parameters.get("name") in RECORDING_WORKFLOWS


def _check(case: Any, base_url: str, seen: Counter[str]) -> None:
    response = case.call(base_url=base_url, timeout=30)
    seen[f"{case.operation.label} {response.status_code}"] += 1
    body = response.text
    assert not LEAKS.search(body), body[:500]
    documented = case.operation.definition.raw["responses"]
    if response.status_code >= 500:
        assert response.status_code in (503, 504) and str(response.status_code) in documented, (response.status_code, body[:500])
    if response.status_code >= 400:
        envelope = response.json()
        assert envelope["success"] is False and envelope["error"]["code"] != "internal", body[:500]
        assert envelope["trace_id"]
    case.validate_response(response, checks=[status_code_conformance, content_type_conformance, response_schema_conformance])


# schemathesis' own pytest loader does not run under pytest 9.2 (it writes Node._nodeid, which is
# gone), so each operation's strategies are driven with hypothesis directly: same generators,
# same checks, one test per protocol-level generation mode.
@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_the_served_api_under_fuzzing(served_schema: Any, serve_instance: dict[str, Any], mode: GenerationMode) -> None:
    seen: Counter[str] = Counter()
    operations = [result.ok() for result in served_schema.get_all_operations()]
    # schemathesis leaves out the document's own path; test_listings... reads it below.
    assert {op.label for op in operations} == {f"{r.method} {r.path}" for r in ROUTES} - {"GET /openapi.json"}
    for operation in operations:
        has_inputs = {"parameters", "requestBody"} & set(operation.definition.raw)
        if mode is GenerationMode.NEGATIVE and not has_inputs:
            continue  # nothing to make invalid (GET /healthz...)
        strategies = [operation.as_strategy(generation_mode=mode)]
        if mode is GenerationMode.POSITIVE:
            strategies += served_schema.get_strategies_from_examples(operation)
        for strategy in strategies:
            @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), database=None)
            @given(case=strategy)
            def fuzz(case: Any) -> None:
                # Explicit examples bypass the hooks: the fault handlers are skipped here too.
                if not (_excluded_body(case.body) or _excluded_path(case.path_parameters)):
                    _check(case, serve_instance["http"], seen)

            fuzz()
    print(f"{mode.value}: {sum(seen.values())} requests;", dict(sorted(seen.items())))
    assert sum(seen.values()) >= 100
    if mode is GenerationMode.POSITIVE:  # valid requests reached the work, not only the validators
        assert any(k.startswith("POST /v1/workflows/{name}/runs 20") for k in seen), seen
        assert any(k.startswith("POST /v1/tasks 200") for k in seen), seen


def test_listings_still_answer_after_fuzzing(http: httpx.Client) -> None:
    for path in ("/v1/runs?limit=1000", "/v1/workflows", "/v1/task-types", "/v1/status", "/openapi.json", "/readyz"):
        assert http.get(path).status_code == 200, path
    runs = http.get("/v1/runs", params={"limit": 1000}).json()["runs"]
    assert runs, "the fuzzer started no run: the workflow routes were not exercised"
    for run in runs:
        assert http.get(f"/v1/runs/{run['run_id']}").status_code == 200
        if run["status"] in ("pending", "running"):  # leave no fuzz run occupying the pools
            assert http.post(f"/v1/runs/{run['run_id']}/cancel").status_code == 200
