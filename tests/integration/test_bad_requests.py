"""Bad requests get an error that names the problem, and memory is left exactly as it was."""

import json

import numpy as np
import pytest
import requests
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from imem_client.client import ServiceError

CONVERSATION = "bad-input"


@pytest.fixture
def stored(client):
    client.chat(CONVERSATION, "The train to Porto leaves at 7:40 from platform 3.", sampling={"max_tokens": 4})
    before = client.export(CONVERSATION)
    yield before
    assert client.export(CONVERSATION) == before, "a rejected request changed memory"


def _raw_chat(service, tensors: dict) -> str:
    """Sends `chat` over gRPC streaming with hand-made tensors; returns the server's error text."""
    client = grpcclient.InferenceServerClient(service.grpc_url.removeprefix("grpc://"))
    errors = []
    inputs = []
    for name, array in tensors.items():
        dtype = {np.object_: "BYTES", np.bool_: "BOOL", np.int32: "INT32", np.float32: "FP32"}[array.dtype.type]
        tensor = grpcclient.InferInput(name, list(array.shape), dtype)
        tensor.set_data_from_numpy(array)
        inputs.append(tensor)
    done = []
    client.start_stream(callback=lambda result, error: (errors.append(error) if error else None, done.append(1)))
    try:
        client.async_stream_infer("chat", inputs)
    except InferenceServerException as error:
        errors.append(error)
    client.stop_stream()
    client.close()
    assert errors, "the bad request was accepted"
    return str(errors[0])


def text(value: bytes | str) -> np.ndarray:
    return np.array([[value.encode() if isinstance(value, str) else value]], dtype=np.object_)


def test_missing_conversation_id_is_named(service, stored):
    assert "conversation_id" in _raw_chat(service, {"message": text("hello")})


def test_empty_message_is_refused(client, stored):
    with pytest.raises(ServiceError, match="'message' must not be empty"):
        client.chat(CONVERSATION, "   ")


def test_non_utf8_message_is_refused(service, stored):
    error = _raw_chat(service, {"conversation_id": text(CONVERSATION), "message": text(b"caf\xe9 \xff")})
    assert "message to embed is not valid UTF-8" in error


def test_wrong_tensor_type_is_refused(service, stored):
    error = _raw_chat(service, {"conversation_id": text(CONVERSATION),
                                "message": np.array([[42]], dtype=np.int32)})
    assert "message" in error and "INT32" in error


def test_oversized_message_is_refused(client, stored):
    with pytest.raises(ServiceError, match="'message' is .* the limit is"):
        client.chat(CONVERSATION, "word " * 5000)


def test_malformed_sampling_json_is_refused(service, stored):
    error = _raw_chat(service, {"conversation_id": text(CONVERSATION), "message": text("hi"),
                                "sampling_parameters": text("{max_tokens: 5")})
    assert "'sampling_parameters' is not valid JSON" in error


def test_unknown_sampling_field_is_refused(client, stored):
    with pytest.raises(ServiceError, match="unknown field"):
        client.chat(CONVERSATION, "hi", sampling={"temprature": 0.5})


def test_malformed_json_over_http_is_refused(service, stored):
    response = requests.post(f"{service.http_url}/v2/models/chat/generate", data=b"{not json",
                             timeout=30)
    # Triton answers its own parse errors with 500 (the OpenAI gateway maps them to 400).
    assert response.status_code >= 400
    assert "failed to parse the request JSON" in response.json()["error"]


def test_bad_ingest_lines_store_nothing(client, stored):
    lines = "\n".join([json.dumps({"role": "user", "text": "fine"}), "{broken"])
    with pytest.raises(ServiceError, match="history line 2 is not valid JSON"):
        client.ingest(CONVERSATION, lines)


def test_unknown_operation_and_unknown_conversation_are_named(client, stored):
    with pytest.raises(ServiceError, match="unknown conversation 'never-seen'"):
        client.recall("never-seen", "anything")
    with pytest.raises(ServiceError, match="unknown conversation 'never-seen'"):
        client.delete("never-seen")
