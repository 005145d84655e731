"""`imem bench locomo` against the real server, on a tiny conversation in LoCoMo's file format."""

import json

from imem_cli.main import main

SAMPLE = {
    "sample_id": "tiny-1",
    "conversation": {
        "speaker_a": "Ana", "speaker_b": "Ben",
        "session_1_date_time": "1:56 pm on 8 May, 2023",
        "session_1": [
            {"speaker": "Ana", "dia_id": "D1:1", "text": "Hi Ben! How was your week?"},
            {"speaker": "Ben", "dia_id": "D1:2", "text": "Great, Ana. I adopted a grey cat called Biscuit."},
            {"speaker": "Ana", "dia_id": "D1:3", "text": "Lovely! Send me a picture, Ben.",
             "blip_caption": "a photo of a grey cat on a sofa"},
            {"speaker": "Ben", "dia_id": "D1:4", "text": "Will do, Ana. How is the new job?"},
        ],
        "session_2_date_time": "10:37 am on 27 June, 2023",
        "session_2": [
            {"speaker": "Ana", "dia_id": "D2:1", "text": "Ben, I started rock climbing at a gym downtown."},
            {"speaker": "Ben", "dia_id": "D2:2", "text": "That sounds fun, Ana! Is it hard?"},
            {"speaker": "Ana", "dia_id": "D2:3", "text": "My arms ache, but I love it."},
            {"speaker": "Ben", "dia_id": "D2:4", "text": "Biscuit knocked a plant off the shelf today."},
        ],
    },
    "qa": [
        {"question": "What is the name of Ben's cat?", "answer": "Biscuit", "evidence": ["D1:2"], "category": 4},
        {"question": "When did Ana start climbing?", "answer": "June 2023", "evidence": ["D:2:1"], "category": 2},
        {"question": "What pets and hobbies do they have?", "answer": "a cat; climbing",
         "evidence": ["D1:2; D2:1", "D9:9"], "category": 1},
        {"question": "What is Ben's favourite car?", "adversarial_answer": "none", "evidence": [], "category": 5},
    ],
}


def test_bench_locomo_reports_quality_and_reruns_cleanly(service, tmp_path, capsys):
    data = tmp_path / "tiny-locomo.json"
    data.write_text(json.dumps([SAMPLE]))
    reports = []
    for run in range(2):  # a rerun deletes and re-creates the conversation
        out = tmp_path / f"report-{run}.json"
        assert main(["bench", "locomo", "--url", service.grpc_url, "--data", str(data), "--conversations", "0",
                     "--json", str(out)]) == 0
        reports.append(json.loads(out.read_text()))
    assert "ev.recall" in capsys.readouterr().out  # the table was printed
    first, second = reports
    for report in reports:
        overall = report["overall"]
        assert overall["questions"] == 3  # category 5 is left out
        assert 0 <= overall["evidence_recall"] <= 1 and 0 <= overall["hit_rate"] <= 1
        assert 0 < overall["context_tokens_mean"] <= report["config"]["context_budget"]
        assert overall["recall_ms_p95"] >= overall["recall_ms_p50"] > 0
        assert set(report["per_category"]) == {"1-multi-hop", "2-temporal", "4-single-hop"}
        assert set(report["baselines"]) == {"recency", "dense", "full_history"}
        assert report["baselines"]["full_history"]["context_tokens_mean"] > 0
        assert {"top_k", "threshold", "context_budget", "store"} <= set(report["config"])
        assert report["evidence_ids_malformed_or_unknown"] == 1  # "D9:9"; "D:2:1" is read as D2:1
        assert report["turns"] == 8
    # Eight turns fit the budget whole: every policy sees every evidence turn, and reruns agree.
    assert first["overall"]["evidence_recall"] == 1.0
    assert first["overall"]["context_tokens_mean"] == second["overall"]["context_tokens_mean"]
    exported = service.client().export("tiny-1", tenant="locomo")["turns"]
    assert len(exported) == 8 and exported[0]["timestamp"] == "1:56 pm on 8 May, 2023"
    assert exported[0]["metadata"]["dia_id"] == "D1:1"
    assert exported[2]["text"].endswith("[shares a photo of a grey cat on a sofa]")
