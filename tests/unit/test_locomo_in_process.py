"""`imem bench locomo --in-process`: the server's memory code run in the benchmark's own process, on a small
file in LoCoMo's format."""

import argparse
import json

import pytest

from imem_bench import locomo

SAMPLE = {
    "sample_id": "tiny",
    "conversation": {
        "speaker_a": "Ana", "speaker_b": "Ben",
        "session_1_date_time": "1:56 pm on 8 May, 2023",
        "session_1": [
            {"speaker": "Ana", "dia_id": "D1:1", "text": "Hi Ben! How was your weekend?"},
            {"speaker": "Ben", "dia_id": "D1:2", "text": "Great, I adopted a grey cat named Biscuit."},
            {"speaker": "Ana", "dia_id": "D1:3", "text": "Wow, that's awesome!"},
            {"speaker": "Ben", "dia_id": "D1:4", "text": "Look!", "blip_caption": "a photo of a grey cat"},
        ],
        "session_2_date_time": "10:37 am on 27 June, 2023",
        "session_2": [
            {"speaker": "Ana", "dia_id": "D2:1", "text": "I started learning the cello last month."},
            {"speaker": "Ben", "dia_id": "D2:2", "text": "Cool! Biscuit still sleeps all day."},
            {"speaker": "Ana", "dia_id": "D2:3", "text": "See you soon, Ben!"},
        ],
    },
    "qa": [
        {"question": "What is the name of Ben's cat?", "answer": "Biscuit", "evidence": ["D1:2"], "category": 4},
        {"question": "Which instrument does Ana learn?", "answer": "cello", "evidence": ["D2:1"], "category": 1},
        {"question": "Not counted", "adversarial_answer": "x", "evidence": ["D1:1"], "category": 5},
    ],
}


def args(path, **kw):
    return argparse.Namespace(data=str(path), conversations=None, questions=0, tenant="locomo", url=None,
                              in_process=True, set=[], policies=["default"], **kw)


def test_in_process_recall_finds_the_evidence_and_reports_per_conversation(tmp_path):
    path = tmp_path / "tiny.json"
    path.write_text(json.dumps([SAMPLE]))
    report = locomo.run(args(path))
    assert report["mode"] == "in-process" and report["turns"] == 7 and report["ingest_ms_per_turn"] > 0
    assert report["overall"]["questions"] == 2 and report["overall"]["evidence_recall"] == 1.0
    assert set(report["per_category"]) == {"1-multi-hop", "4-single-hop"}
    assert report["per_conversation"]["tiny"]["evidence_recall"] == 1.0
    assert report["overall"]["recall_with_embedding_ms_p50"] >= report["overall"]["recall_ms_p50"] > 0
    assert report["baselines"].keys() == {"full_history"}


def test_settings_are_overridden_by_name_and_type(tmp_path):
    from imem.config import MemoryConfig

    assert locomo.typed(MemoryConfig(), {"top_k": "16", "threshold": "0.2", "speaker_search": "0"}) == \
        {"top_k": 16, "threshold": 0.2, "speaker_search": False}
    with pytest.raises(SystemExit, match="not a MemoryConfig setting"):
        locomo.typed(MemoryConfig(), {"topk": "16"})
