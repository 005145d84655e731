"""A flood beyond capacity: requests over the limit of generations in flight (4 on this test's server)
are refused at once with an error that says so, store nothing, and the server serves normally once the
flood has passed."""

import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest

from imem_client.client import ServiceError


@pytest.fixture(scope="module")
def service(new_service):
    running = new_service({"IMEM_MAX_GENERATIONS": "4"})
    yield running
    running.server.stop()


@pytest.fixture
def client(service):
    c = service.client()
    yield c
    c.close()


def test_a_flood_gets_fast_clear_refusals_and_the_server_recovers(service, client):
    run = uuid.uuid4().hex[:8]
    rejected_before = service.metric("imem_llm_requests_rejected_total")

    def one(i):
        flood_client = service.client("grpc")
        try:
            reply = flood_client.chat(f"flood-{run}-{i}", f"Flood message {i}.",
                                      sampling={"max_tokens": 200, "ignore_eos": True})
            return "served", reply
        except ServiceError as error:
            return "refused", str(error)
        finally:
            flood_client.close()

    with ThreadPoolExecutor(24) as pool:
        outcomes = list(pool.map(one, range(24)))
    served = [o for o in outcomes if o[0] == "served"]
    refused = [o for o in outcomes if o[0] == "refused"]
    assert len(served) + len(refused) == 24 and len(served) >= 4
    assert refused, "24 long generations at once never met the limit of 4"
    assert all("busy" in why and "IMEM_MAX_GENERATIONS" in why for _, why in refused), refused[0]
    assert service.metric("imem_llm_requests_rejected_total") - rejected_before == len(refused)
    # A refusal comes before generation and stores nothing (how fast it comes: `imem bench backpressure`).
    for i, outcome in enumerate(outcomes):
        if outcome[0] == "refused":
            try:
                turns = client.export(f"flood-{run}-{i}")["turns"]
            except ServiceError as error:
                assert "unknown conversation" in str(error)
            else:
                raise AssertionError(f"a refused request stored {turns}")
        else:
            assert outcome[1].completion_tokens == 200
    assert service.metric("imem_llm_requests_running") == 0
    reply = client.chat(f"after-flood-{run}", "Calm again?", sampling={"max_tokens": 4})
    assert (reply.turn, reply.reply_turn) == (1, 2)
