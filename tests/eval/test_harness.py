"""lm-evaluation-harness through groundup equals lm-evaluation-harness through transformers: the same local
folder and task files give identical accuracies and generations, and log-likelihoods within 1e-4 (fp32),
for multiple-choice tasks (one-token answers 2-shot; HellaSwag-style multi-token endings), a rolling
log-likelihood task and a generate_until task (1-shot), with the window cut to 64 so that contexts are
truncated and texts span several windows."""

from __future__ import annotations

import json
import math

import pytest

pytest.importorskip("lm_eval")

TASKS = ["tiny_mc", "tiny_cloze", "tiny_text", "tiny_gen"]
SHOTS = {"tiny_mc": 2, "tiny_gen": 1}


def harness_run(model: str, folder, task_dir, **extra):
    import lm_eval
    from lm_eval.tasks import TaskManager

    import groundup.eval  # noqa: F401  (registers the groundup model)

    tm = TaskManager(include_path=str(task_dir), include_defaults=False)  # indexing all of lm-eval: 15 s
    out = {}
    for task in TASKS:  # one call per shot count
        r = lm_eval.simple_evaluate(model=model, model_args=f"pretrained={folder},dtype=float32,max_length=64,"
                                    "device=cpu", tasks=[task], num_fewshot=SHOTS.get(task, 0), batch_size=4,
                                    task_manager=tm, log_samples=True, bootstrap_iters=0, **extra)
        out[task] = (r["results"][task], sorted(r["samples"][task], key=lambda s: s["doc_id"]))
    return out


@pytest.fixture(scope="module")
def runs(lm_folder, task_dir):
    return {name: harness_run(name, lm_folder, task_dir) for name in ("hf", "groundup")}


def metric_values(results: dict) -> dict[str, float]:
    return {k: v for k, v in results.items() if "," in k and "stderr" not in k}


def test_groundup_backend_reports_what_the_hf_backend_reports(runs):
    for task in TASKS:
        (hf, hf_samples), (gu, gu_samples) = runs["hf"][task], runs["groundup"][task]
        a, b = metric_values(hf), metric_values(gu)
        assert a.keys() == b.keys() and a
        for k in a:
            if k.startswith(("acc", "exact_match")):
                assert a[k] == b[k], (task, k)
            else:
                assert math.isclose(a[k], b[k], rel_tol=1e-5), (task, k, a[k], b[k])
        assert len(hf_samples) == len(gu_samples)
        for x, y in zip(hf_samples, gu_samples, strict=True):
            assert x["arguments"] == y["arguments"]  # the same prompts were asked
            for rx, ry in zip(x["resps"], y["resps"], strict=True):
                if task == "tiny_gen":
                    assert rx[0] == ry[0]
                elif task in ("tiny_mc", "tiny_cloze"):
                    assert abs(rx[0][0] - ry[0][0]) < 1e-4 and rx[0][1] == ry[0][1]
                else:
                    assert abs(rx[0] - ry[0]) < 1e-4


def test_the_run_covers_truncation_and_several_windows(lm_folder, runs):
    import groundup as gu

    tok = gu.Tokenizer.from_pretrained(lm_folder)
    texts = [s["arguments"][0][0] for s in runs["groundup"]["tiny_text"][1]]
    assert max(len(tok.encode(t)) for t in texts) > 64  # a text spans two windows
    ctx = [s["arguments"][0][0] for s in runs["groundup"]["tiny_gen"][1]]
    assert max(len(tok.encode(c)) for c in ctx) > 64 - 32  # generation contexts were cut on the left
    mc = runs["groundup"]["tiny_mc"][1][0]["arguments"][0][0]
    assert mc.count("Question:") == 3  # two shots, then the question


def test_native_eval_equals_the_harness(lm_folder, runs):
    import groundup as gu
    from groundup import eval as ge

    model, tok = gu.from_pretrained(lm_folder), gu.Tokenizer.from_pretrained(lm_folder)
    for task in TASKS:
        res = ge.evaluate(model, tok, [ge.load_task(task)], num_fewshot=SHOTS.get(task, 0), max_length=64,
                          batch_size=4, progress=False)
        mine, samples = res["results"][task], res["samples"][task]
        theirs, their_samples = runs["groundup"][task]
        for k, v in metric_values(theirs).items():
            assert math.isclose(mine[k.split(",")[0]], v, rel_tol=1e-9), (task, k)
        for s, x in zip(their_samples, samples, strict=True):
            if task in ("tiny_mc", "tiny_cloze"):
                assert [r[0][0] for r in s["resps"]] == pytest.approx(x["loglikelihoods"], abs=1e-9)
            elif task == "tiny_gen":
                assert s["resps"][0][0] == x["output"]
            else:
                assert s["resps"][0][0] == pytest.approx(x["loglikelihood"], abs=1e-9)


def test_groundup_lm_eval_command_writes_lm_evals_results(lm_folder, task_dir, tmp_path):
    from groundup.cli import main

    out = tmp_path / "res"
    rc = main(["lm-eval", "--model", "groundup", "--model_args", f"pretrained={lm_folder},max_length=64",
               "--tasks", "tiny_mc", "--include_path", str(task_dir), "--output_path", str(out), "--limit", "4",
               "--batch_size", "4"])
    assert rc == 0
    files = list(out.rglob("results_*.json"))
    assert len(files) == 1
    res = json.loads(files[0].read_text())
    assert res["results"]["tiny_mc"]["sample_len"] == 4 if "sample_len" in res["results"]["tiny_mc"] else True
    assert 0.0 <= res["results"]["tiny_mc"]["acc,none"] <= 1.0
    assert res["config"]["model"] == "groundup"
