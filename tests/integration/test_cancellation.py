"""A client that cancels mid-stream: the generation stops, nothing stays in flight, and memory keeps the
message (its answer had begun) without a reply. The chat model is called directly, so Triton marks its own
request cancelled."""

import os
import queue
import signal

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from conftest import wait_for


def _bytes(value: str) -> np.ndarray:
    return np.array([[value.encode()]], dtype=np.object_)


def _start_and_cancel(service, model: str, tensors: dict, engine: int, responses_first: int = 3) -> float:
    """Starts a stream and cancels it once `responses_first` responses have come, with `engine` (vLLM's
    EngineCore) paused meanwhile and let run only while the client waits (RunningService.step_engine).
    Returns the generated-token count when the client cancelled."""
    client = grpcclient.InferenceServerClient(service.grpc_url.removeprefix("grpc://"))
    inputs = []
    for name, array in tensors.items():
        tensor = grpcclient.InferInput(name, list(array.shape), "BOOL" if array.dtype == bool else "BYTES")
        tensor.set_data_from_numpy(array)
        inputs.append(tensor)
    responses = queue.Queue()
    client.start_stream(callback=lambda result, error: responses.put((result, error)))
    os.kill(engine, signal.SIGSTOP)
    try:
        client.async_stream_infer(model, inputs)
        for _ in range(responses_first):  # a few tokens arrive, then the client walks away
            assert service.step_engine(engine, until=lambda: not responses.empty())
            result, error = responses.get(timeout=60)
            assert error is None, error
        tokens = service.metric("imem_llm_generated_tokens_total")
        client.stop_stream(cancel_requests=True)
        # until the chat model sees the cancellation (at most every 50 ms) the engine runs slowly
        service.step_engine(engine, until=lambda: service.metric("imem_llm_requests_running") == 0)
    finally:
        os.kill(engine, signal.SIGCONT)
    client.close()
    return tokens


def _idle(service, seconds: float = 300) -> bool:
    return wait_for(lambda: service.metric("imem_llm_requests_running") == 0, seconds, step=0.1)


LONG = '{"max_tokens": 1500, "ignore_eos": true}'


def test_cancelling_a_plain_generation_aborts_the_vllm_request(service):
    """A gRPC stream cancellation of a plain generation (text_input) is seen and vLLM's generation is
    aborted at once, long before its 1,500 tokens, with nothing left running. The engine is held while the
    client waits; a take whose cancel came after the last token (a stalled test on a busy machine, see
    step_engine) stopped nothing, and another is tried, up to five."""
    tensors = {"text_input": _bytes("Tell me everything."), "stream": np.array([[True]]),
               "sampling_parameters": _bytes(LONG)}
    engine = service.vllm_engine()
    for _ in range(5):
        cancelled, tokens = (service.metric(name) for name in ("imem_llm_requests_cancelled_total",
                                                               "imem_llm_generated_tokens_total"))
        _start_and_cancel(service, "chat", tensors, engine)
        assert _idle(service)
        if service.metric("imem_llm_requests_cancelled_total") == cancelled + 1:
            assert service.metric("imem_llm_generated_tokens_total") - tokens < 1500
            return
        assert service.metric("imem_llm_generated_tokens_total") - tokens == 1500  # it ran to the end
    pytest.fail("no cancellation came before the last token in 5 tries")


def test_a_cancelled_chat_stops_its_generation_and_keeps_the_message_unanswered(service, client):
    """A chat's cancellation stops its generation; the message stays stored (its answer had begun), with no
    reply. The engine is held while the client waits, but on a busy machine the test itself can stall past
    the last token (see step_engine): a cancel that came too late to stop anything leaves the reply stored
    whole, never in part; two of at most six takes must stop the generation."""
    conversation = "cancelled-chat"
    engine = service.vllm_engine()
    stopped, late, seen = 0, [], 0  # turns stored before this take
    for take in range(6):
        cancelled, tokens = (service.metric(name) for name in ("imem_llm_requests_cancelled_total",
                                                               "imem_llm_generated_tokens_total"))
        at_cancel = _start_and_cancel(
            service, "chat", {"conversation_id": _bytes(conversation),
                              "message": _bytes(f"Tell me a very long story, take {take}."),
                              "stream": np.array([[True]]), "sampling_parameters": _bytes(LONG)},
            engine=engine) - tokens
        assert _idle(service)
        generated = service.metric("imem_llm_generated_tokens_total") - tokens
        turns = client.export(conversation)["turns"]
        stored = [(t["turn"], t["role"], t.get("answered"), (t["metadata"] or {}).get("completion_tokens"))
                  for t in turns[seen:]]
        unanswered = [(seen + 1, "user", False, None)]
        whole = [(seen + 1, "user", True, None), (seen + 2, "assistant", None, generated)]
        seen = len(turns)
        diagnosis = f"take {take}: {generated:.0f} tokens, {at_cancel:.0f} when the client cancelled; stored {stored}"
        if service.metric("imem_llm_requests_cancelled_total") == cancelled + 1:  # stopped in time
            assert stored == unanswered, diagnosis
            stopped += 1
            if stopped == 2:
                break
        else:  # the generation had ended (1,500 tokens, or fewer at the model's context length)
            assert stored == whole, diagnosis
            late.append(diagnosis)
    assert stopped == 2, f"{stopped} of {take + 1} cancels stopped the generation; too late: {late}"
    # The conversation goes on: the next exchange is whole and numbered after the interrupted ones.
    reply = client.chat(conversation, "Just say hello then.", sampling={"max_tokens": 4})
    assert (reply.turn, reply.reply_turn) == (seen + 1, seen + 2)
