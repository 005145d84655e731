"""A client that cancels mid-stream: the generation stops, nothing stays in flight, and memory keeps the
message (its answer had begun) without a reply."""

import os
import queue
import signal
import time

import numpy as np
import pytest
import tritonclient.grpc as grpcclient


def _bytes(value: str) -> np.ndarray:
    return np.array([[value.encode()]], dtype=np.object_)


def _start_and_cancel(service, model: str, tensors: dict, responses_first: int = 3, engine: int = 0) -> None:
    """Starts a stream and cancels it once `responses_first` responses have come; with `engine` (vLLM's
    EngineCore) paused meanwhile, let run only while the client waits (RunningService.step_engine)."""
    client = grpcclient.InferenceServerClient(service.grpc_url.removeprefix("grpc://"))
    inputs = []
    for name, array in tensors.items():
        tensor = grpcclient.InferInput(name, list(array.shape), "BOOL" if array.dtype == bool else "BYTES")
        tensor.set_data_from_numpy(array)
        inputs.append(tensor)
    responses = queue.Queue()
    client.start_stream(callback=lambda result, error: responses.put((result, error)))
    if engine:
        os.kill(engine, signal.SIGSTOP)
    try:
        client.async_stream_infer(model, inputs)
        for _ in range(responses_first):  # a few tokens arrive, then the client walks away
            if engine:
                assert service.step_engine(engine, until=lambda: not responses.empty())
            result, error = responses.get(timeout=60)
            assert error is None, error
        client.stop_stream(cancel_requests=True)
        if engine:  # the cancellation reaches llm behind memory's queue: until then the engine runs slowly
            service.step_engine(engine, until=lambda: service.metric("imem_llm_requests_running") == 0)
    finally:
        if engine:
            os.kill(engine, signal.SIGCONT)
    client.close()


def _idle(service, seconds: float = 300) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and service.metric("imem_llm_requests_running") > 0:
        time.sleep(0.1)
    return service.metric("imem_llm_requests_running") == 0


LONG = '{"max_tokens": 1500, "ignore_eos": true}'


def test_cancelling_an_llm_stream_aborts_the_vllm_request(service):
    """Triton 2.51 passes a gRPC stream cancellation on to a decoupled model called directly only some of
    the time (seen: 2 of 3 tries), so the client cancels up to five generations; each one the model is
    told about must be aborted in vLLM at once, long before its 1,500 tokens, and nothing may be left
    running."""
    tensors = {"text_input": _bytes("Tell me everything."), "stream": np.array([[True]]),
               "sampling_parameters": _bytes(LONG)}
    before = service.metric("imem_llm_requests_cancelled_total")
    for _ in range(5):
        tokens_before = service.metric("imem_llm_generated_tokens_total")
        _start_and_cancel(service, "llm", tensors)
        assert _idle(service)
        if service.metric("imem_llm_requests_cancelled_total") > before:
            assert service.metric("imem_llm_generated_tokens_total") - tokens_before < 1500
            return
    pytest.fail("no cancellation reached the llm model in 5 tries")


def test_a_cancelled_chat_stops_its_generation_and_keeps_the_message_unanswered(service, client):
    """Through the chat ensemble every cancellation is seen: Triton marks the steps after it cancelled,
    memory passes them through (a failed step would leave the whole chat in flight in Triton 2.51) and
    tells llm to stop."""
    conversation = "cancelled-chat"
    engine = service.vllm_engine()
    for attempt in range(3):
        cancelled, tokens = (service.metric(name) for name in ("imem_llm_requests_cancelled_total",
                                                               "imem_llm_generated_tokens_total"))
        _start_and_cancel(service, "chat", {"conversation_id": _bytes(conversation),
                                            "message": _bytes(f"Tell me a very long story, take {attempt}."),
                                            "stream": np.array([[True]]), "sampling_parameters": _bytes(LONG)},
                          engine=engine)
        assert _idle(service)
        generated = service.metric("imem_llm_generated_tokens_total") - tokens
        # Which way it failed, if it does (seen once, on a machine at load ~40): all 1,500 tokens means no
        # cancellation reached the server; fewer, that the generation ended another way.
        assert service.metric("imem_llm_requests_cancelled_total") == cancelled + 1, f"{generated:.0f} tokens"
        assert generated < 1500
    turns = client.export(conversation)["turns"]
    assert [(t["turn"], t["role"], t["answered"]) for t in turns] == [(1, "user", False), (2, "user", False),
                                                                      (3, "user", False)]
    # The conversation goes on: the next exchange is whole and numbered after the interrupted ones.
    reply = client.chat(conversation, "Just say hello then.", sampling={"max_tokens": 4})
    assert (reply.turn, reply.reply_turn) == (4, 5)
