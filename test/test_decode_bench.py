"""specvla_bench runs end to end on tiny checkpoints and reports every method (numbers, no timing asserts)."""
import json

from specvla_ros.bench.decode_bench import main


def test_bench_json_reports_all_methods(tiny_checkpoints, capsys):
    target, draft, eagle = tiny_checkpoints
    rc = main(["--target", str(target), "--draft", str(draft), "--draft", str(eagle), "--decisions", "2",
               "--warmup", "0", "--relax-bins", "5", "--device", "cpu", "--json"])
    assert rc == 0
    report = json.loads(capsys.readouterr().out)
    methods = report["methods"]
    expected = {"baseline", "spec_exact[model]", "spec_relaxed[model,r=5]", "spec_exact[eagle]",
                "spec_relaxed[eagle,r=5]", "spec_exact[oracle]", "lower_bound", "hf_greedy", "hf_assisted"}
    assert set(methods) == expected
    for name, m in methods.items():
        assert m["n"] == 2 and 0 < m["p50_ms"] <= m["p95_ms"], name
        if name != "baseline":
            assert m["speedup_vs_baseline"] > 0
    assert methods["baseline"]["tokens_per_verify_pass"] == 1.0
    assert methods["spec_exact[model]"]["tokens_per_verify_pass"] >= 1.0
    assert 0.0 <= methods["spec_exact[eagle]"]["acceptance_rate"] <= 1.0
    assert "inputs_embeds" in methods["hf_assisted"]["note"]
    oracle = methods["spec_exact[oracle]"]  # replays the target's greedy output: all accepted
    assert oracle["acceptance_rate"] == 1.0 and oracle["tokens_per_verify_pass"] > 3.0
    assert report["checkpoints"]["source"] == "given"


def test_bench_table_and_bad_dir(tiny_checkpoints, capsys, tmp_path):
    target, draft, _ = tiny_checkpoints
    assert main(["--target", str(target), "--draft", str(draft), "--decisions", "1", "--warmup", "0",
                 "--no-hf", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "baseline" in out and "spec_exact[model]" in out and "hf_assisted" not in out
    assert main(["--target", str(tmp_path / "missing"), "--decisions", "1"]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_bench_on_simulator_frames_with_the_shipped_pair(capsys):
    """--frames sim: consecutive camera frames of expert episodes; the shipped pair repeats its
    narration there, so drafting accepts more than one token per target pass."""
    assert main(["--frames", "sim", "--decisions", "4", "--warmup", "1", "--no-hf", "--device", "cpu",
                 "--threads", "1", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["frames"] == "sim" and report["checkpoints"]["source"] == "shipped"
    exact = report["methods"]["spec_exact[model]"]
    assert exact["n"] == 4 and exact["tokens_per_verify_pass"] > 1.0


def test_free_drafts_add_exact_rows_and_a_relaxed_row(tiny_checkpoints, capsys):
    target, draft, _ = tiny_checkpoints
    assert main(["--target", str(target), "--draft", str(draft), "--decisions", "2", "--warmup", "0",
                 "--relax-bins", "5", "--no-hf", "--device", "cpu", "--free-drafts", "--json"]) == 0
    methods = json.loads(capsys.readouterr().out)["methods"]
    added = {"spec_exact[model+hist]", "spec_exact[model+la]", "spec_exact[model+hist+la]",
             "spec_exact[model+hist+la+wn]", "spec_relaxed[model+hist+la+wn,r=5]"}
    assert added <= set(methods)
    for name in added:
        assert methods[name]["n"] == 2 and methods[name]["tokens_per_verify_pass"] >= 1.0, name
