"""The gateway's own OpenAPI schema fuzzed with schemathesis (valid and invalid requests alike): no 5xx,
and a rejected request leaves memory exactly as it was (checked through export after every request)."""

from urllib.parse import quote

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings

from imem_gateway.app import create_app
from imem_gateway.errors import ApiError
from imem_gateway.keys import KeyRing
from imem_gateway.settings import Settings
from imem_gateway.translate import conversation_id

# The schema the framework serves: the same app object, so no server is needed to collect the tests.
schema = schemathesis.openapi.from_dict(create_app(Settings(triton_url="grpc://unused:1"), KeyRing([])).openapi())
EXAMPLES = 30  # per operation: enough to hit every field with valid and invalid values in ~2 minutes


@pytest.fixture(scope="module")
def stored():
    """What memory should hold for each conversation the fuzzing touched (None: no such conversation)."""
    return {}


def target_conversation(case) -> str | None:
    """The conversation a request would address, or None when it cannot name one."""
    try:
        if case.path.startswith("/v1/conversations/"):
            return conversation_id(str((case.path_parameters or {}).get("conversation_id", "")), None)
        if case.path == "/v1/chat/completions":
            headers = {k.lower(): v for k, v in (case.headers or {}).items()}
            body = case.body if isinstance(case.body, dict) else {}
            user = body.get("user") if isinstance(body.get("user"), str) else None
            header = headers.get("x-conversation-id")
            return conversation_id(header if isinstance(header, str) else None, user)
    except ApiError:
        return None
    return None


def exported(gateway, conversation: str):
    response = httpx.get(f"{gateway.url}/v1/conversations/{quote(conversation, safe='')}", timeout=60,
                         headers={"Authorization": f"Bearer {gateway.keys['fuzz']}"})
    if response.status_code == 404:
        return None
    assert response.status_code == 200, response.text
    return response.json()["turns"]


@schema.parametrize()
@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
def test_fuzzed_requests_get_no_5xx_and_rejected_ones_store_nothing(case, gateway, stored):
    conversation = target_conversation(case)
    body = case.body if isinstance(case.body, dict) else None
    names_one = "x-conversation-id" in {k.lower() for k in case.headers or {}} or (body and "user" in body)
    if case.path == "/v1/chat/completions" and body is not None and not names_one:
        # Both ways of naming a conversation are optional in the schema, so most generated requests name
        # none and stop at that check; give those one of a few ids so the rest of the request is exercised.
        conversation = f"fuzz-{len(repr(body)) % 3}"
        case.headers = {**(case.headers or {}), "X-Conversation-Id": conversation}
    if body is not None and isinstance(body.get("messages"), list) and len(repr(body)) % 3:
        # Likewise a generated list rarely ends with a non-empty user message: end most with one.
        body["messages"] = [*body["messages"], {"role": "user", "content": "What do you remember?"}]
    if conversation is not None and conversation not in stored:
        stored[conversation] = exported(gateway, conversation)  # the baseline, whatever ran before
    response = case.call(base_url=gateway.url, headers={"Authorization": f"Bearer {gateway.keys['fuzz']}"},
                         timeout=120)
    assert response.status_code < 500, f"{case.method} {case.path} -> {response.status_code}: {response.text[:500]}"
    if response.status_code >= 400:
        assert set(response.json()["error"]) == {"message", "type", "param", "code"}
    if conversation is None or case.path == "/health":
        return
    after = exported(gateway, conversation)
    if response.status_code < 300 and case.method in ("POST", "DELETE"):
        stored[conversation] = after  # a turn was added, or the conversation deleted
        if case.method == "DELETE":
            assert after is None
        return
    assert after == stored[conversation], f"a {response.status_code} changed memory of {conversation!r}"
