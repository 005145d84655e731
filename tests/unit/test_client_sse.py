"""The HTTP stream reader of the client (and of the Locust file): Triton's generate_stream events, read
through requests as they arrive, whatever characters the model's text holds."""

import io
import json

import requests

from imem_client.wire import sse_events

TEXTS = ["plain", "line\u2028separator", "next\u0085line", "file\u001cseparator", "para\u2029graph", "é ✓ 🐙"]


def response_of(body: bytes) -> requests.Response:
    response = requests.Response()
    response.raw, response.status_code = io.BytesIO(body), 200
    return response


def test_text_with_unicode_line_breaks_stays_in_its_event():
    # ensure_ascii=False: the characters go on the wire unescaped, which JSON allows and Triton does.
    body = b"".join(b"data: " + json.dumps({"text_output": t}, ensure_ascii=False).encode() + b"\n\n" for t in TEXTS)
    events = list(sse_events(response_of(body).iter_lines(chunk_size=7)))
    assert [e["text_output"] for e in events] == TEXTS


def test_lines_that_are_not_data_are_skipped():
    body = b": keep-alive\n\nevent: x\ndata: {\"a\": 1}\n\n"
    assert list(sse_events(response_of(body).iter_lines())) == [{"a": 1}]
