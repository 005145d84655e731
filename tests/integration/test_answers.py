"""The served default model (SmolLM2-135M-Instruct) answers from memory through `chat`: `imem bench answers
--quick` runs and reports what the full run reports, memory beats the recency window at the same context
budget on facts planted far back, and a fact told in a live chat is recalled after small talk (whether the
135M model then answers with it is reported, not required: it apologises instead, docs/quality.md)."""

import json

import pytest

from imem_bench import answers

SMALL_TALK = ["I went for a walk by the river this morning.", "The weather has been really grey lately.",
              "I made pancakes for breakfast.", "My neighbour is painting his fence blue.",
              "I watched a film about penguins last night.", "The bus was late again today.",
              "I started reading a mystery novel.", "We are thinking of repainting the kitchen.",
              "My brother called me from Canada.", "I bought some tomatoes at the market.",
              "The café on the corner has new chairs.", "I tried a yoga class yesterday.",
              "It rained all afternoon.", "I found an old photo album in the attic.",
              "My phone battery keeps dying.", "I planted some basil on the balcony.",
              "The library is closed on Mondays now.", "I listened to a podcast about bridges.",
              "We had pizza with friends on Friday.", "I need to buy new running shoes."]


@pytest.fixture(scope="module")
def default_model_service(new_service, default_model_path):
    running = new_service(env={"IMEM_MODEL": str(default_model_path)})
    yield running
    running.server.stop()


# A conversation in LoCoMo's file format with one answerable question of each category 1-4: the test needs
# no data from outside the repository.
LOCOMO = {
    "sample_id": "tiny-answers",
    "conversation": {
        "speaker_a": "Ana", "speaker_b": "Ben",
        "session_1_date_time": "1:56 pm on 8 May, 2023",
        "session_1": [
            {"speaker": "Ana", "dia_id": "D1:1", "text": "Hi Ben! How was your week?"},
            {"speaker": "Ben", "dia_id": "D1:2", "text": "Great, Ana. I adopted a grey cat called Biscuit."},
            {"speaker": "Ana", "dia_id": "D1:3", "text": "Lovely! I started rock climbing at a gym downtown."},
        ],
        "session_2_date_time": "10:37 am on 27 June, 2023",
        "session_2": [
            {"speaker": "Ben", "dia_id": "D2:1", "text": "Biscuit knocked a plant off the shelf today."},
            {"speaker": "Ana", "dia_id": "D2:2", "text": "I climbed my first hard route yesterday!"},
        ],
    },
    "qa": [
        {"question": "What pets and hobbies do they have?", "answer": "a cat; climbing",
         "evidence": ["D1:2", "D1:3"], "category": 1},
        {"question": "When did Ana climb her first hard route?", "answer": "26 June 2023", "evidence": ["D2:2"],
         "category": 2},
        {"question": "Would Ben like a dog?", "answer": "Maybe not, he has a cat", "evidence": ["D1:2"],
         "category": 3},
        {"question": "What is the name of Ben's cat?", "answer": "Biscuit", "evidence": ["D1:2"], "category": 4},
    ],
}


def test_quick_bench_reports_intervals_and_memory_beats_recency_far_back(default_model_service, tmp_path):
    out, data = tmp_path / "answers.json", tmp_path / "tiny-locomo.json"
    data.write_text(json.dumps([LOCOMO]))
    assert answers.main(["--url", default_model_service.grpc_url, "--quick", "--locomo", str(data),
                         "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert {"machine", "model", "memory_settings", "facts", "locomo", "seconds", "quick"} <= report.keys()
    assert report["machine"]["git_commit"] and report["memory_settings"]["profile"] == "smollm2-135m"
    facts = report["facts"]
    assert facts["distances"] == [10, 100, 300] and facts["facts"] == 6 and facts["seconds"] > 0
    for policy in answers.POLICIES:
        for figure in [*facts["accuracy_by_distance"][policy].values(), facts["accuracy"][policy]]:
            assert {"rate", "n", "ci95"} <= figure.keys()
            assert figure["ci95"][0] <= figure["rate"] <= figure["ci95"][1]
    locomo = report["locomo"]
    assert locomo["questions"] == 4 and set(locomo["memory_f1_minus"]) == {"recency", "none", "window"}
    for policy in answers.POLICIES:
        overall = locomo["summary"][policy]["overall"]
        assert overall["questions"] == 4 and overall["f1_ci95"][0] <= overall["f1"] <= overall["f1_ci95"][1]
    for answer in facts["answers"]:
        print(answer["policy"], answer["distance"], answer["value"], "->", answer["answer"][:80])
    far = {policy: sum(a["correct"] for a in facts["answers"] if a["policy"] == policy and a["distance"] >= 100)
           for policy in ("memory", "recency")}
    # What memory recalls reaches the model: facts beyond the recency window are answered, and more of them.
    assert far["memory"] > far["recency"] and far["memory"] >= 2, far


def test_a_fact_told_in_a_live_chat_is_answered_after_small_talk(default_model_service):
    client = default_model_service.client()
    sampling = {"temperature": 0.0, "max_tokens": 24}
    client.chat("live-locker", "Please remember this: my locker code is 4417.", "live", sampling=sampling,
                stream=False)
    for remark in SMALL_TALK:  # 20 exchanges: 40 turns, the model's own replies among them
        client.chat("live-locker", remark, "live", sampling=sampling, stream=False)
    reply = client.chat("live-locker", "Can you remind me of my locker code?", "live", sampling=sampling,
                        stream=False)
    print("reply:", reply.text, "| recalled:", reply.recalled)
    # Memory's part: the fact is the best recalled turn, and no reply of the model's own is recalled.
    assert "4417" in reply.recalled[0]["text"] and all(t["role"] == "user" for t in reply.recalled)
    # The model's part: SmolLM2-135M, with that line right before the question, answers with an apology
    # (docs/quality.md); reported rather than failed, so that a model that answers shows as XPASS.
    if "4417" not in reply.text:
        pytest.xfail(f"the default model did not answer from the recalled fact: {reply.text!r}")
