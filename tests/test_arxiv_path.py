"""The real arXiv path end to end on CPU: 31 real papers -> prepare -> train -> evaluate -> plot."""
import json
import os

import plot
import prepare
import train
import evaluate


def test_real_papers_end_to_end(realtext, tiktoken_cache, tmp_path):
    data = str(tmp_path / "arxiv")
    prepare.main([f"--data_files={realtext}", "--tokenizer=r50k_base", f"--data_dir={data}"])
    runs = []
    for k in (1, 2):
        out = str(tmp_path / "out" / f"arxiv_k{k}")
        train.main([f"--data_dir={data}", f"--out_dir={out}", f"--k={k}", "--token_budget=4000",
                    "--epochs=1", "--n_layer=1", "--n_head=2", "--n_embd=16", "--batch_size=4",
                    "--device=cpu", "--cpu_threads=1", "--warmup_iters=2", "--val_windows=4"])
        evaluate.main([out, "--eval_windows=8"])
        runs.append(out)
    summary = json.load(open(os.path.join(runs[1], "eval.json")))
    assert summary["source"] == "arxiv" and summary["k"] == 2
    assert summary["components"] == ["cs.IT", "cs.PL"]          # the two smallest of the top five
    assert set(summary["categories"]) == {"cs.IT", "cs.PL", "math.ST", "cs.DS", "math.GR"}
    entry = summary["categories"]["cs.IT"]
    assert "bayes" not in entry and len(entry["xe_t"]) == 100
    # a barely trained GPT-2-vocabulary model is still near uniform: ln 50257 = 10.8 nats
    assert 6 < entry["xe_mean"] < 11.5
    plot.main([f"--out={tmp_path / 'out'}", f"--results={tmp_path / 'results'}"])
    report = open(tmp_path / "results" / "REPORT.md").read()
    assert "all 2 runs trained on 4,000 tokens" in report
