"""The gateway's HTTP surface with no Triton behind it: keys, limits, validation, and 503 when Triton
cannot be reached. (tests/integration/test_gateway*.py drive it against the real server.)"""

import socket

import pytest
from fastapi.testclient import TestClient

from imem_gateway.app import create_app
from imem_gateway.keys import KeyRing, parse_env
from imem_gateway.settings import Settings

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "user": "c1"}


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def http():
    settings = Settings(triton_url=f"grpc://127.0.0.1:{closed_port()}", timeout=5.0)
    keys = KeyRing(parse_env("sk-a=acme", 0, 0) + [k for k in parse_env("sk-slow=acme", 1, 0)])
    with TestClient(create_app(settings, keys), raise_server_exceptions=False) as client:
        yield client


def auth(key="sk-a"):
    return {"Authorization": f"Bearer {key}"}


def error_of(response, status):
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    return error


def test_missing_and_wrong_keys_are_401(http):
    assert error_of(http.post("/v1/chat/completions", json=CHAT), 401)["code"] == "invalid_api_key"
    assert error_of(http.get("/v1/models", headers=auth("sk-nope")), 401)["message"] == "invalid API key"
    assert error_of(http.get("/v1/models", headers={"Authorization": "Basic c2stYQ=="}), 401)


def test_a_key_over_its_request_limit_gets_429_with_retry_after(http):
    assert http.get("/v1/models", headers=auth("sk-slow")).status_code == 200
    response = http.get("/v1/models", headers=auth("sk-slow"))
    assert error_of(response, 429)["code"] == "rate_limit_exceeded"
    assert 1 <= int(response.headers["Retry-After"]) <= 60


def test_validation_errors_are_400_in_openai_shape(http):
    error = error_of(http.post("/v1/chat/completions", json={**CHAT, "tools": []}, headers=auth()), 400)
    assert error["param"] == "tools" and error["type"] == "invalid_request_error"
    json_type = {"Content-Type": "application/json", **auth()}
    error = error_of(http.post("/v1/chat/completions", content=b"{not json", headers=json_type), 400)
    assert "not valid JSON" in error["message"]
    error = error_of(http.post("/v1/chat/completions", content=b"[1]", headers=json_type), 400)
    assert "JSON object" in error["message"]
    assert "JSON object" in error_of(http.post("/v1/chat/completions", content=b"{}", headers=auth()), 400)["message"]
    error = error_of(http.post("/v1/chat/completions", json={**CHAT, "user": None}, headers=auth()), 400)
    assert error["code"] == "missing_conversation_id"
    long_id = {"X-Conversation-Id": "x" * 300, **auth()}
    assert error_of(http.post("/v1/chat/completions", json=CHAT, headers=long_id), 400)["param"] == "X-Conversation-Id"


def test_unreachable_triton_is_503(http):
    assert error_of(http.post("/v1/chat/completions", json=CHAT, headers=auth()), 503)["type"] == "server_error"
    assert error_of(http.post("/v1/chat/completions", json={**CHAT, "stream": True}, headers=auth()), 503)
    assert error_of(http.get("/v1/conversations/c1", headers=auth()), 503)
    assert error_of(http.get("/health"), 503)


def test_unknown_routes_and_methods_answer_in_openai_shape(http):
    assert error_of(http.get("/v1/nothing", headers=auth()), 404)
    assert error_of(http.put("/v1/chat/completions", headers=auth()), 405)


def test_models_list_names_the_served_model(http):
    assert http.get("/v1/models", headers=auth()).json()["data"][0]["id"] == "imem-chat"
    assert error_of(http.get("/v1/models/gpt-4", headers=auth()), 404)["code"] == "model_not_found"


def test_a_body_over_the_limit_is_refused_with_413_before_it_is_read():
    settings = Settings(triton_url=f"grpc://127.0.0.1:{closed_port()}", timeout=5.0, max_body_bytes=2048)
    with TestClient(create_app(settings, KeyRing(parse_env("sk-a=acme", 0, 0))), raise_server_exceptions=False) as http:
        huge = {**CHAT, "messages": [{"role": "user", "content": "x" * 5000}]}
        error = error_of(http.post("/v1/chat/completions", json=huge, headers=auth()), 413)
        assert "2048 bytes" in error["message"] and error["code"] == "request_too_large"

        def chunks():  # no Content-Length: the size is only known while reading
            yield b'{"model": "m", "user": "c1", "messages": [{"role": "user", "content": "'
            for _ in range(10):
                yield b"y" * 500
            yield b'"}]}'

        error = error_of(http.post("/v1/chat/completions", content=chunks(), headers=auth()), 413)
        assert error["code"] == "request_too_large"
        # Under the limit, the same request reaches Triton (unreachable here: 503), not the body check.
        assert error_of(http.post("/v1/chat/completions", json=CHAT, headers=auth()), 503)
