"""Task files: the shipped tasks load, prompts and few-shot draws follow the harness, metrics and filters
score as the harness does, bad files fail with file:line before any model runs, and `groundup eval`."""

from __future__ import annotations

import json

import pytest

from groundup import eval as ge
from groundup.cli import main


def write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_shipped_tasks_load_and_are_checked():
    kinds = {n: ge.load_task(n).kind for n in ("tiny_mc", "tiny_gen", "tiny_text", "goat")}
    assert kinds == {"tiny_mc": "multiple_choice", "tiny_gen": "generate_until", "tiny_text": "loglikelihood_rolling",
                     "goat": "generate_until"}
    mc = ge.load_task("tiny_mc")
    assert [mc.gold(d) for d in mc.docs[:4]] == [1, 2, 0, 3]


def test_goat_task_is_the_arithmetic_data_test_set(tmp_path):
    from groundup.cli.arithmetic import write_data

    _, test = write_data(tmp_path, 10, 200, digits=2, kinds=["add", "sub", "mul", "div"])
    assert [d.fields for d in ge.load_task("goat").docs] == test


def test_few_shot_draw_is_the_harness_draw():
    samplers = pytest.importorskip("lm_eval.api.samplers")
    task = ge.load_task("tiny_mc")
    ours = ge.shots_for(task, 3, 1234)
    sampler = samplers.ContextSampler([d.fields for d in task.fewshot_docs], rnd=1234)
    assert [[d.fields for d in s] for s in ours] == [sampler.sample(3) for _ in task.docs]
    # shots from the test docs themselves never include the doc being asked
    task.fewshot_docs = None
    for doc, shots in zip(task.docs, ge.shots_for(task, 4, 0), strict=True):
        assert len(shots) == 4 and doc.fields not in [s.fields for s in shots]


def test_prompt_layout():
    task = ge.load_task("tiny_mc")
    shot = task.fewshot_docs[0]
    ctx = ge.context(task, task.docs[0], [shot])
    assert ctx == ("Question: What do you use to see things?\nAnswer: eyes\n\n"
                   "Question: How many legs does a spider have?\nAnswer:")


def test_gsm8k_style_filter_and_exact_match():
    from groundup.eval.run import _extract

    task = ge.load_task("tiny_gen")
    assert _extract(task, " 3 + 4 = 7 apples.\n#### 7") == "7"
    assert _extract(task, " seven") == "[invalid]"
    opts = task.metrics[0]
    gold = task.answer_text(task.docs[0])
    assert ge.exact_match("7", gold, ignore_case=True, regexes_to_ignore=opts["regexes_to_ignore"])
    assert not ge.exact_match("8", gold, regexes_to_ignore=opts["regexes_to_ignore"])
    goat = ge.load_task("goat")
    ignore = goat.metrics[0]["regexes_to_ignore"]
    div = next(d for d in goat.docs if d.fields["prompt"].startswith("What is"))
    gold = goat.answer_text(div)
    assert ge.exact_match(gold, gold, regexes_to_ignore=ignore)
    q, r = gold.rsplit("= ", 1)[1].split(" R ")
    assert ge.exact_match(f" worked steps\nTherefore, x = {q} R {r}\n", gold, regexes_to_ignore=ignore)
    assert not ge.exact_match(f"Therefore, x = {q} R {int(r) + 1}", gold, regexes_to_ignore=ignore)


def test_bare_jsonl_tasks_and_their_errors(tmp_path):
    mc = ge.load_task(write(tmp_path / "mc.jsonl", [{"question": "q", "choices": ["a", "b"], "answer": 1}] * 3))
    assert mc.kind == "multiple_choice" and mc.name == "mc"
    bad = write(tmp_path / "bad.jsonl", [{"question": "q", "choices": ["a", "b"], "answer": 0},
                                          {"question": "q", "choices": ["a", "b"]}])
    with pytest.raises(ge.TaskError, match=r"bad\.jsonl:2: missing field 'answer'"):
        ge.load_task(bad)
    out = write(tmp_path / "range.jsonl", [{"question": "q", "choices": ["a", "b"], "answer": 0},
                                            {"question": "q", "choices": ["a", "b"], "answer": 2}])
    with pytest.raises(ge.TaskError, match=r"range\.jsonl:2: answer index 2 is out of range for 2 choices"):
        ge.load_task(out)
    (tmp_path / "nojson.jsonl").write_text('{"text": "fine"}\n{"text": \n', encoding="utf-8")
    with pytest.raises(ge.TaskError, match=r"nojson\.jsonl:2: not valid JSON"):
        ge.load_task(tmp_path / "nojson.jsonl")


def test_yaml_task_errors(tmp_path):
    write(tmp_path / "d.jsonl", [{"q": "x", "a": "y"}])
    base = "task: t\ndataset_path: json\ndataset_kwargs: {data_files: {test: d.jsonl}}\ntest_split: test\n"
    cases = {
        "dataset_path: hellaswag\ndoc_to_text: q\n": "groundup reads local JSON lines only",
        "output_type: generate_until\ndoc_to_text: '{{question}}'\ndoc_to_target: a\n": r"d\.jsonl:1: doc_to_text",
        "output_type: multiple_choice\ndoc_to_text: q\ndoc_to_target: a\n": "needs doc_to_choice",
        "output_type: loglikelihood\ndoc_to_text: q\n": "output_type 'loglikelihood'",
        "output_type: generate_until\ndoc_to_text: q\nnum_fewshot: 3\n": "only 0 documents to draw shots from",
    }
    for i, (extra, msg) in enumerate(cases.items()):
        spec = base.replace("dataset_path: json\n", "") + extra if extra.startswith("dataset_path") else base + extra
        path = tmp_path / f"t{i}.yaml"
        path.write_text(spec, encoding="utf-8")
        with pytest.raises(ge.TaskError, match=msg):
            ge.load_task(path)
    (tmp_path / "fn.yaml").write_text(base + "doc_to_text: !function utils.doc\n", encoding="utf-8")
    with pytest.raises(ge.TaskError, match="!function"):
        ge.load_task(tmp_path / "fn.yaml")


def test_eval_command(lm_folder, tmp_path, capsys):
    text = tmp_path / "t.txt"
    text.write_text("A sliding window lets a model with a short context score a long document. " * 6)
    out, md, png = tmp_path / "r.json", tmp_path / "r.md", tmp_path / "r.png"
    rc = main(["eval", str(lm_folder), "--tasks", "tiny_mc", "tiny_text", "--limit", "6", "--perplexity", str(text),
               "--window", "48", "--stride", "24", "--kl-against", str(lm_folder), "--out", str(out), "--markdown",
               str(md), "--plot", str(png)])
    assert rc == 0
    res = json.loads(out.read_text())[lm_folder.name]
    assert set(res["results"]) == {"tiny_mc", "tiny_text"} and res["tasks"]["tiny_mc"]["n"] == 6
    ppl = res["perplexity"]["all"]
    assert ppl["kl_divergence"] == pytest.approx(0.0, abs=1e-6) and ppl["top1_agreement"] == 1.0
    table = md.read_text()
    assert "| tiny_mc | 0 | 6 | acc |" in table and "bits per byte" in table
    assert png.stat().st_size > 1000
    assert "tiny_mc" in capsys.readouterr().out


def test_eval_command_refuses_bad_input_before_loading(tmp_path, capsys):
    bad = write(tmp_path / "bad.jsonl", [{"question": "q", "choices": ["a", "b"], "answer": 5}])
    assert main(["eval", str(tmp_path / "no_model"), "--tasks", str(bad)]) == 2
    assert "bad.jsonl:1: answer index 5 is out of range" in capsys.readouterr().err
    assert main(["eval", str(tmp_path), "--perplexity", str(tmp_path / "missing.txt")]) == 2
    assert "missing.txt: no such file" in capsys.readouterr().err
    assert main(["eval", "--write-tasks", str(tmp_path / "tasks")]) == 0
    assert (tmp_path / "tasks" / "tiny_mc.yaml").is_file()


def test_lm_eval_missing_names_the_install(monkeypatch, capsys):
    import sys

    monkeypatch.setitem(sys.modules, "lm_eval.models", None)  # as if lm-eval were not installed
    assert ge.register() is False
    assert main(["lm-eval", "--model", "groundup", "--tasks", "x"]) == 2
    assert "pip install 'groundup[eval]'" in capsys.readouterr().err


def test_eval_command_needs_no_lm_eval(lm_folder, monkeypatch, tmp_path):
    import sys

    for name in [m for m in sys.modules if m == "lm_eval" or m.startswith("lm_eval.")] + ["lm_eval"]:
        monkeypatch.setitem(sys.modules, name, None)  # any import of lm-eval now fails
    out = tmp_path / "r.json"
    assert main(["eval", str(lm_folder), "--tasks", "tiny_mc", "--limit", "2", "--out", str(out)]) == 0
    assert json.loads(out.read_text())[lm_folder.name]["tasks"]["tiny_mc"]["n"] == 2
