"""OpenAI requests to chat turns, validation errors to OpenAI's 400 naming the field, and Triton's error codes
to HTTP errors."""

import pytest
from pydantic import ValidationError

from imem_client.wire import Code, ServiceError
from imem_gateway.errors import ApiError
from imem_gateway.schema import IGNORED_FIELDS, ChatCompletionRequest
from imem_gateway.translate import conversation_id, to_turn
from imem_gateway.upstream import api_error
from imem_gateway.validation import param_name, validation_error


def request(messages, **fields):
    return ChatCompletionRequest.model_validate({"model": "any", "messages": messages, **fields})


def user(text):
    return {"role": "user", "content": text}


def test_the_last_user_message_is_the_turn_and_earlier_ones_are_history():
    turn = to_turn(request([
        {"role": "system", "content": "Be brief."},
        user("My dog is Rex."),
        {"role": "assistant", "content": "Nice!"},
        {"role": "assistant", "content": None},
        {"role": "developer", "content": [{"type": "text", "text": "Answer in French."}]},
        {"role": "user", "content": [{"type": "text", "text": "What is"}, {"type": "text", "text": "my dog called?"}]},
    ]), "c1")
    assert turn.conversation_id == "c1"
    assert turn.message == "What is\nmy dog called?"
    assert turn.system == "Be brief.\n\nAnswer in French."
    assert turn.history == [{"role": "user", "text": "My dog is Rex."}, {"role": "assistant", "text": "Nice!"}]
    assert turn.sampling == {} and not turn.stream and not turn.include_usage


def test_sampling_fields_map_to_vllm_names():
    turn = to_turn(request([user("hi")], max_tokens=50, max_completion_tokens=20, temperature=0, top_p=0.5,
                           seed=7, stop="END", presence_penalty=0.1, frequency_penalty=-0.1, n=1, logprobs=False,
                           stream=True, stream_options={"include_usage": True}, store=True,
                           metadata={"app": "x"}), "c")
    assert turn.sampling == {"max_tokens": 20, "temperature": 0, "top_p": 0.5, "seed": 7, "stop": ["END"],
                             "presence_penalty": 0.1, "frequency_penalty": -0.1}
    assert turn.stream and turn.include_usage


@pytest.mark.parametrize("messages, fields, param", [
    ([{"role": "assistant", "content": "hi"}], {}, "messages[0].role"),
    ([user("   ")], {}, "messages[0].content"),
    ([user("hi\ud800")], {}, "messages[0].content"),
    ([user("hi")], {"logprobs": True}, "logprobs"),
    ([user("hi")], {"stop": ["a", "b", "c", "d", "e"]}, "stop"),
    ([user("hi")], {"stop": [""]}, "stop"),
])
def test_unusable_requests_name_the_field(messages, fields, param):
    with pytest.raises(ApiError) as caught:
        to_turn(request(messages, **fields), "c")
    assert caught.value.status == 400 and caught.value.param == param


def test_conversation_id_from_header_then_user():
    assert conversation_id("h", "u") == "h"
    assert conversation_id(None, "u") == "u"
    assert conversation_id("  ", "u") == "u"
    for header, user_field, param in ((None, None, "user"), ("x" * 257, None, "X-Conversation-Id"),
                                      (None, "\udcff", "user")):
        with pytest.raises(ApiError) as caught:
            conversation_id(header, user_field)
        assert caught.value.status == 400 and caught.value.param == param


def errors_of(body):
    with pytest.raises(ValidationError) as caught:
        ChatCompletionRequest.model_validate(body)
    return [{**e, "loc": ("body", *e["loc"])} for e in caught.value.errors()]


@pytest.mark.parametrize("body, param, code", [
    ({"model": "m", "messages": [user("hi")], "tools": []}, "tools", "unsupported_parameter"),
    ({"model": "m", "messages": [user("hi")], "response_format": {"type": "json_object"}}, "response_format",
     "unsupported_parameter"),
    ({"messages": [user("hi")]}, "model", "missing_required_parameter"),
    ({"model": "m", "messages": [user("hi")], "stream_options": {"Odd Key": 1}}, "stream_options.Odd Key",
     "unsupported_parameter"),
    ({"model": "m", "messages": []}, "messages", "invalid_value"),
    ({"model": "m", "messages": [{"role": "tool", "content": "x"}]}, "messages[0].role", "invalid_value"),
    ({"model": "m", "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
     "messages[0].content[0].type", "invalid_value"),
    ({"model": "m", "messages": [user("hi")], "temperature": 3}, "temperature", "invalid_value"),
    ({"model": "m", "messages": [user("hi")], "n": 2}, "n", "invalid_value"),
    ({"model": "m", "messages": [user("hi")], "max_tokens": 0}, "max_tokens", "invalid_value"),
])
def test_validation_errors_become_400_naming_the_field(body, param, code):
    error = validation_error(errors_of(body))
    assert (error.status, error.param, error.code) == (400, param, code)
    assert error.body()["error"]["type"] == "invalid_request_error"


def test_param_names():
    assert param_name(("body", "messages", 0, "content", "list[TextPart]", 1, "type")) == "messages[0].content[1].type"
    assert param_name(("body", "stop", "str")) == "stop"
    assert param_name(("header", "x-conversation-id")) == "X-Conversation-Id"
    assert param_name(("body",)) is None


def test_invalid_json_and_missing_body():
    assert "not valid JSON" in validation_error([{"type": "json_invalid", "loc": ("body", 3), "msg": "x",
                                                  "ctx": {"error": "Expecting value"}}]).message
    assert "JSON object" in validation_error([{"type": "missing", "loc": ("body",), "msg": "Field required"}]).message


def test_ignored_fields_are_accepted_and_change_nothing():
    values = {"metadata": {"a": "b"}, "store": True, "service_tier": "auto", "parallel_tool_calls": False,
              "safety_identifier": "s", "prompt_cache_key": "k"}
    assert set(values) == set(IGNORED_FIELDS)
    assert to_turn(request([user("hi")], **values), "c") == to_turn(request([user("hi")]), "c")


@pytest.mark.parametrize("code, status, openai_code, retry_after", [
    (Code.INVALID, 400, None, None),
    (Code.NOT_FOUND, 404, "conversation_not_found", None),
    (Code.UNAVAILABLE, 503, "server_overloaded", "1"),
    (Code.INTERNAL, 502, "upstream_error", None),
    (Code.CANCELLED, 502, "upstream_error", None),
])
def test_triton_error_codes_map_to_http_statuses(code, status, openai_code, retry_after):
    error = api_error(ServiceError("the server's words", code))
    assert (error.status, error.code, error.headers.get("Retry-After")) == (status, openai_code, retry_after)
    assert "the server's words" in error.message
