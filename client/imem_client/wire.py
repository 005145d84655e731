"""The service's wire format, in one place: the tensors a request sends, what a response carries, and what
an error means. The client, the gateway, the benchmarks and the Locust file all speak it through here.

Every tensor is a batch of one ([1, 1]). A chat streams `Chunk`s: text deltas, the stored message's turn
from the first one on, and on the final one (its finish_reason set) the reply's turn, the token counts
and what memory recalled.

Errors carry a code (`Code`). Our models answer with Triton's error codes, which reach an HTTP caller as
the status and a unary gRPC caller as the status; a gRPC stream carries only the message (Triton 2.51 can
end it with the code, `triton_grpc_error`, but that path crashed the server under a flood of refusals
here), so every message of ours ends with its code as a tag, " [unavailable]", read back in one place:
`parse_error`. An error without the tag (Triton's own) reads as INTERNAL where no status says otherwise.
"""

from __future__ import annotations

import enum
import json
import re
from dataclasses import dataclass, field
from typing import Iterable, Iterator

import numpy as np

CHAT = "chat"
MEMORY = "memory"
# tritonclient's own channel settings, plus: each client its own connections (gRPC otherwise shares them
# process-wide, and a new client inherits another's back-off after a refused connection, such as a
# server being restarted), and a reconnection tried at least every 2 s (gRPC's default grows to 120 s).
GRPC_CHANNEL_ARGS = [("grpc.max_send_message_length", 2**31 - 1), ("grpc.max_receive_message_length", 2**31 - 1),
                     ("grpc.use_local_subchannel_pool", 1), ("grpc.max_reconnect_backoff_ms", 2000)]


class Code(str, enum.Enum):
    """What went wrong, as a caller branches on it (the tag python_backends/imem/errors.py writes)."""

    INVALID = "invalid"  # the request is wrong: nothing was stored
    NOT_FOUND = "not_found"  # an unknown conversation, or one deleted while the request was in flight
    UNAVAILABLE = "unavailable"  # busy, restarting, the store full, or the server not reachable: retry later
    CANCELLED = "cancelled"
    INTERNAL = "internal"


GRPC_CODES = {"StatusCode.INVALID_ARGUMENT": Code.INVALID, "StatusCode.NOT_FOUND": Code.NOT_FOUND,
              "StatusCode.UNAVAILABLE": Code.UNAVAILABLE, "StatusCode.CANCELLED": Code.CANCELLED,
              "StatusCode.DEADLINE_EXCEEDED": Code.UNAVAILABLE}
HTTP_CODES = {400: Code.INVALID, 404: Code.NOT_FOUND, 503: Code.UNAVAILABLE}
_TAG = re.compile(r" \[(" + "|".join(c.value for c in Code) + r")\]$")


class ServiceError(RuntimeError):
    """The server refused or failed the request (the message is the server's), or could not be reached."""

    def __init__(self, message: str, code: Code = Code.INTERNAL):
        super().__init__(message)
        self.code = code


def parse_error(message: str, code: Code | None = None) -> ServiceError:
    """A message of ours with its code tag ("... [not_found]") as a ServiceError of that code, the tag
    removed. The tag wins over `code`, the transport's: Triton's HTTP stream answers any failure of its
    first response with 400."""
    match = _TAG.search(message)
    if match:
        return ServiceError(message[:match.start()], Code(match.group(1)))
    return ServiceError(message, code or Code.INTERNAL)


def grpc_error(error: Exception) -> ServiceError:
    """A tritonclient (or grpc) error as a ServiceError: the code of its gRPC status (a unary call, or the
    connection), else of its message's tag (a stream)."""
    # tritonclient's InferenceServerException: status() is "StatusCode.X" or None
    if hasattr(error, "status") and hasattr(error, "message"):
        status, message = str(error.status()), error.message()
    elif hasattr(error, "code") and hasattr(error, "details"):  # a grpc.RpcError
        status, message = str(error.code()), error.details()
    else:
        status, message = "", str(error)
    return parse_error(message or str(error), GRPC_CODES.get(status))


def http_error(status: int, body: str) -> ServiceError:
    """An HTTP error response as a ServiceError. Triton answers a failed request with {"error": message},
    and a stream whose first response failed with that object as one event ("data: {...}")."""
    message = body
    try:
        error = json.loads(body.removeprefix("data:"))
        if isinstance(error, dict) and isinstance(error.get("error"), str):
            message = error["error"]
    except ValueError:
        pass
    return parse_error(message, HTTP_CODES.get(status))


@dataclass
class Chunk:
    text: str
    finish_reason: str = ""
    turn: int = 0  # the stored user turn (from the first response on)
    reply_turn: int = 0  # the stored reply (final response)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    recalled: list = field(default_factory=list)

    @property
    def final(self) -> bool:
        return bool(self.finish_reason)

    @classmethod
    def from_values(cls, values: dict) -> "Chunk":
        """From a response's outputs by name (absent ones take their default)."""
        recalled = values.get("recalled") or "[]"
        return cls(
            text=values.get("text_output") or "",
            finish_reason=values.get("finish_reason") or "",
            turn=int(values.get("turn") or 0),
            reply_turn=int(values.get("reply_turn") or 0),
            prompt_tokens=int(values.get("prompt_tokens") or values.get("num_input_tokens") or 0),
            completion_tokens=int(values.get("completion_tokens") or values.get("num_output_tokens") or 0),
            recalled=json.loads(recalled) if isinstance(recalled, str) else recalled,
        )


def chat_fields(conversation_id: str, message: str, tenant: str = "default", stream: bool = True,
                sampling: dict | None = None, system: str = "", recall_policy: str = "") -> dict:
    """A chat request's inputs by name; `recall_policy`: a benchmark's reference policy (imem/recall.py)."""
    fields: dict = {"conversation_id": conversation_id, "message": message, "tenant": tenant, "stream": stream,
                    "sampling_parameters": json.dumps(sampling or {})}
    if system:
        fields["system"] = system
    if recall_policy:
        fields["recall_policy"] = recall_policy
    return fields


def prompt_fields(prompt: str, stream: bool = True, sampling: dict | str | None = None,
                  exclude_input: bool = True) -> dict:
    """A plain generation's inputs (NVIDIA's vLLM backend tensors): no memory."""
    return {"text_input": prompt, "stream": stream, "exclude_input_in_output": exclude_input,
            "sampling_parameters": sampling if isinstance(sampling, str) else json.dumps(sampling or {})}


def memory_fields(operation: str, conversation_id: str, tenant: str = "default", **extra: str) -> dict:
    """A direct memory operation's inputs: recall (message), ingest (payload), export, delete."""
    return {"operation": operation, "conversation_id": conversation_id, "tenant": tenant, **extra}


def inputs(module, fields: dict) -> list:
    """`fields` as InferInputs of a tritonclient module (grpc, grpc.aio or http): BOOL or BYTES, [1, 1]."""
    tensors = []
    for name, value in fields.items():
        if isinstance(value, bool):
            tensor = module.InferInput(name, [1, 1], "BOOL")
            tensor.set_data_from_numpy(np.array([[value]], dtype=bool))
        else:
            tensor = module.InferInput(name, [1, 1], "BYTES")
            data = value if isinstance(value, bytes) else str(value).encode("utf-8")
            tensor.set_data_from_numpy(np.array([[data]], dtype=np.object_))
        tensors.append(tensor)
    return tensors


def json_inputs(fields: dict) -> list[dict]:
    """`fields` as the inputs of a KServe v2 JSON request (Triton's HTTP /infer): BYTES or BOOL, [1, 1]."""
    return [{"name": name, "shape": [1, 1], "datatype": "BOOL" if isinstance(value, bool) else "BYTES",
             "data": [value]} for name, value in fields.items()]


def scalar(array):
    """The one value of an output tensor, as text or a Python number."""
    if array is None:
        return None
    value = array.reshape(-1)[0]
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if isinstance(value, np.generic):
        return value.item()
    return value


def result_values(result) -> dict:
    """A tritonclient result's outputs by name."""
    response = result.get_response()
    outputs = response["outputs"] if isinstance(response, dict) else response.outputs
    names = [o["name"] if isinstance(o, dict) else o.name for o in outputs]
    return {name: scalar(result.as_numpy(name)) for name in names}


def sse_events(lines: Iterable[bytes]) -> Iterator[dict]:
    """The JSON events of a server-sent-event stream, given its lines as bytes. Bytes, because decoded text
    would also be split at U+2028, U+0085, ..., which JSON allows unescaped inside a string."""
    for line in lines:
        if line.startswith(b"data:"):
            yield json.loads(line[5:])
