"""`groundup serve` as a subprocess on a free loopback port, driven by the official openai client: every
endpoint, streaming included; greedy completions equal gu.generate at any concurrency (with preemption forced
by a tiny block budget) and with adapters mixed; echo + logprobs equal the model's own log-probabilities."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import torch
from serve_util import lm_adapters, lm_folder  # noqa: F401  (fixtures)

import groundup as gu
from groundup.peft import load_adapter

openai = pytest.importorskip("openai")
KEY = "test-key"
CASCADE_T = -4.6  # the cascade keeps lora0's answer when its mean token logprob reaches this
FAULT = [7, 7, 7]  # GROUNDUP_SERVE_FAULT: a prompt starting with these ids fails inside its step


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(args: list[str], env: dict | None = None):
    """Run `groundup serve ARGS` on a free port; returns (process, base url) once /health answers."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "groundup", "serve", *args, "--port", str(port)],
                            env={**os.environ, **(env or {})}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited: {proc.stdout.read().decode()}")
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError("the server did not start in 120 s")


def stop(proc) -> None:
    """Stop the server; its log goes to the test's output (shown when a test failed)."""
    proc.terminate()
    try:
        out, _ = proc.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
    print(out.decode(errors="replace")[-5000:])


@pytest.fixture(scope="module")
def server(lm_folder, lm_adapters):
    adapters = [f"--adapter={n}={d}" for n, d in lm_adapters.items() if n != "lora3"]
    proc, url = start([str(lm_folder), *adapters, "--api-key", KEY, "--block-size", "4", "--num-blocks", "40",
                       "--max-seqs", "8", "--max-step-tokens", "24", "--max-requests", "24", "--max-tokens", "64",
                       "--max-request-bytes", "20000", "--cascade", "tiny-lm:lora0,tiny-lm",
                       "--cascade-thresholds", str(CASCADE_T)], env={"GROUNDUP_SERVE_FAULT": ",".join(map(str, FAULT))})
    yield url
    stop(proc)


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server + "/v1", api_key=KEY, max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def local(lm_folder):
    return gu.from_pretrained(lm_folder).eval(), gu.Tokenizer.from_pretrained(lm_folder)


def alone(model, ids, n):
    out = gu.generate(model, [ids], n, eos_token_id=model.config.eos_ids)[0, len(ids):].tolist()
    return out[: out.index(model.config.eos_ids[0]) + 1] if model.config.eos_ids[0] in out else out


TEXTS = ["the quick brown fox", "def add(a, b):", "one two three", "hello world, hello", "the lazy dog jumps",
         "five six seven eight nine", "quick quick", "return a + b", "hello", "ten nine eight seven six five"]


def test_models_health_and_metrics(server, client):
    ids = [m.id for m in client.models.list().data]
    assert ids == ["tiny-lm", "tiny-lm:lora0", "tiny-lm:lora1", "tiny-lm:lora2", "tiny-lm:soft0", "tiny-lm:soft1",
                   "cascade"]
    assert httpx.get(server + "/health").json()["status"] == "ok"
    text = httpx.get(server + "/metrics").text
    for name in ("queue_length", "running_sequences", "kv_blocks_used", "generation_tokens_per_second",
                 "time_to_first_token_seconds_count"):
        assert f"groundup_{name} " in text
    assert httpx.get(server + "/").text.startswith("<!doctype html>")


def test_greedy_completions_equal_generate_at_any_concurrency(client, local, server):
    model, tok = local

    def one(text):
        r = client.completions.create(model="tiny-lm", prompt=text, max_tokens=24, temperature=0, logprobs=0)
        return r.choices[0]

    with ThreadPoolExecutor(len(TEXTS)) as pool:
        got = list(pool.map(one, TEXTS))
    for text, choice in zip(TEXTS, got, strict=True):
        want = alone(model, tok.encode(text, allowed_special="all"), 24)
        assert choice.text == tok.decode(want, skip_special_tokens=True), text
        assert len(choice.logprobs.tokens) == len(want)
    metrics = httpx.get(server + "/metrics").text
    assert "groundup_preemptions_total 0" not in metrics  # 40 blocks of 4 cannot hold ten at once


def test_echo_logprobs_are_the_models_own(client, local):
    model, tok = local
    ids = tok.encode("the quick brown fox jumps", allowed_special="all")
    full = torch.log_softmax(model(torch.tensor([ids])).float()[0], -1)
    for max_tokens in (0, 1):
        r = client.completions.create(model="tiny-lm", prompt=ids, max_tokens=max_tokens, echo=True, logprobs=1,
                                      temperature=0)
        lp = r.choices[0].logprobs
        assert lp.token_logprobs[0] is None and len(lp.token_logprobs) == len(ids) + max_tokens
        want = [float(full[i - 1, ids[i]]) for i in range(1, len(ids))]
        assert lp.token_logprobs[1: len(ids)] == pytest.approx(want, abs=1e-4)
        assert all(max(t.values()) == pytest.approx(float(full[i].max()), abs=1e-4)
                   for i, t in enumerate(lp.top_logprobs[1: len(ids)]))
        assert r.choices[0].text.startswith(tok.decode(ids))
    batch = client.completions.create(model="tiny-lm", prompt=[ids, ids[:3]], max_tokens=2, temperature=0)
    assert [c.index for c in batch.choices] == [0, 1] and batch.usage.prompt_tokens == len(ids) + 3


def test_streaming_completion_and_chat(client, local):
    model, tok = local
    kw = dict(model="tiny-lm", prompt="one two three", max_tokens=10, temperature=0)
    whole = client.completions.create(**kw).choices[0].text
    pieces = list(client.completions.create(**kw, stream=True, stream_options={"include_usage": True}))
    assert "".join(c.choices[0].text for c in pieces if c.choices) == whole
    assert pieces[-1].usage.completion_tokens > 0
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello world"}]
    ids = tok.apply_chat_template(messages, add_generation_prompt=True)
    want = tok.decode(alone(model, ids, 12), skip_special_tokens=True)
    chat = client.chat.completions.create(model="tiny-lm", messages=messages, max_tokens=12, temperature=0)
    assert chat.choices[0].message.content == want and chat.usage.prompt_tokens == len(ids)
    stream = client.chat.completions.create(model="tiny-lm", messages=messages, max_tokens=12, temperature=0,
                                            stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == want
    assert chunks[-1].usage.completion_tokens == chat.usage.completion_tokens
    lp = client.chat.completions.create(model="tiny-lm", messages=messages, max_tokens=3, temperature=0,
                                        logprobs=True, top_logprobs=2)
    assert len(lp.choices[0].logprobs.content) == 3 and len(lp.choices[0].logprobs.content[0].top_logprobs) == 2


def test_adapters_mixed_in_one_batch_equal_each_alone(client, local, lm_folder, lm_adapters):
    model, tok = local
    names = [None, "lora0", "lora1", "lora2", "soft0", "soft1"]
    ids = tok.encode("hello world", allowed_special="all")

    def one(name):
        r = client.completions.create(model="tiny-lm" + (f":{name}" if name else ""), prompt=ids, max_tokens=8,
                                      temperature=0)
        return r.choices[0].text

    with ThreadPoolExecutor(len(names)) as pool:
        got = list(pool.map(one, names))
    for name, text in zip(names, got, strict=True):
        m = model if name is None else load_adapter(gu.from_pretrained(lm_folder).eval(), lm_adapters[name])
        virtual = m.embed.prompt_ids() if name and name.startswith("soft") else []
        assert text == tok.decode(alone(m, virtual + ids, 8), skip_special_tokens=True), name
    assert len(set(got)) == len(names)
    # several adapters with weights in one request: a mix built on first use, 1 x lora0 + 0 x lora1 = lora0
    mix = client.completions.create(model="tiny-lm:lora0@1+lora1@0", prompt=ids, max_tokens=8, temperature=0)
    assert mix.choices[0].text == got[1]
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="tiny-lm:lora0+nope", prompt=ids, max_tokens=2)
    with pytest.raises(openai.BadRequestError):
        client.completions.create(model="tiny-lm:lora0+soft0", prompt=ids, max_tokens=2)


def test_an_adapter_registered_at_runtime(server, client, local, lm_folder, lm_adapters):
    _, tok = local
    r = httpx.post(server + "/v1/adapters", json={"name": "late", "path": lm_adapters["lora3"]},
                   headers={"Authorization": f"Bearer {KEY}"})
    assert r.status_code == 200, r.text
    ids = tok.encode("one two", allowed_special="all")
    got = client.completions.create(model="tiny-lm:late", prompt=ids, max_tokens=6, temperature=0).choices[0].text
    m = load_adapter(gu.from_pretrained(lm_folder).eval(), lm_adapters["lora3"])
    assert got == tok.decode(alone(m, ids, 6), skip_special_tokens=True)


def test_bad_requests_get_their_status_and_the_server_goes_on(server, client, local):
    model, tok = local
    auth = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}

    def post(body, path="/v1/completions", headers=auth):
        data = body if isinstance(body, (str, bytes)) else json.dumps(body)
        return httpx.post(server + path, content=data, headers=headers, timeout=60)

    ok = {"model": "tiny-lm", "prompt": "hello", "max_tokens": 2}
    assert post("{not json").status_code == 400
    assert post(ok, headers={}).status_code == 401
    r = post({**ok, "model": "gpt-9"})
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
    assert post({**ok, "model": "tiny-lm:nope"}).status_code == 404
    r = post({**ok, "prompt": "one two " * 200})  # longer than the 160-position context
    assert r.status_code == 400 and "context" in r.json()["error"]["message"]
    r = post({**ok, "max_tokens": 1000})
    assert r.status_code == 400 and r.json()["error"]["param"] == "max_tokens"
    r = post({**ok, "temperature": -1})
    assert r.status_code == 400 and r.json()["error"]["param"] == "temperature"
    assert post({**ok, "top_p": 2}).json()["error"]["param"] == "top_p"
    assert post({**ok, "n": 0}).json()["error"]["param"] == "n"
    assert post({**ok, "prompt": "x" * 30000}).status_code == 413
    assert post({**ok, "frobnicate": 1}).json()["error"]["param"] == "frobnicate"
    assert post({"model": "tiny-lm", "messages": [{"role": "robot"}]}, "/v1/chat/completions").status_code == 400
    assert post({"model": "tiny-lm", "input": "x"}, "/v1/embeddings").status_code == 400  # a decoder
    # an exception inside one request's step: a 500 for it, the others finish
    with ThreadPoolExecutor(3) as pool:
        bad = pool.submit(post, {"model": "tiny-lm", "prompt": [*FAULT, 3, 4], "max_tokens": 8})
        good = [pool.submit(post, {**ok, "max_tokens": 8}) for _ in range(2)]
        assert bad.result().status_code == 500 and "fault injected" in bad.result().json()["error"]["message"]
        assert all(g.result().status_code == 200 for g in good)
    # too many at once: 429 for those past --max-requests 24, nothing lost
    with ThreadPoolExecutor(40) as pool:
        long = {**ok, "max_tokens": 64, "ignore_eos": True}  # each stays in flight a while
        replies = [f.result() for f in [pool.submit(post, long) for _ in range(40)]]
    codes = [r.status_code for r in replies]
    unexpected = [r.text[:300] for r in replies if r.status_code not in (200, 429)]
    assert not unexpected and 429 in codes and 200 in codes, unexpected  # the bodies say what went wrong
    # a client that leaves mid-stream: its sequence is stopped and freed at once
    def aborted() -> int:
        text = httpx.get(server + "/metrics").text
        return int(next(x for x in text.splitlines() if x.startswith("groundup_aborted_sequences_total ")).split()[1])

    before = aborted()
    with httpx.stream("POST", server + "/v1/completions", headers=auth, timeout=60,
                      json={**ok, "max_tokens": 64, "n": 16, "stream": True, "ignore_eos": True}) as r:
        next(r.iter_lines())  # 16 x 64 tokens: the client leaves long before they are done
    deadline = time.time() + 10
    while time.time() < deadline and "groundup_running_sequences 0" not in httpx.get(server + "/metrics").text:
        time.sleep(0.05)
    assert "groundup_requests_in_flight 0" in httpx.get(server + "/metrics").text
    assert aborted() > before
    # and a normal request still works, token for token
    r = client.completions.create(model="tiny-lm", prompt="hello", max_tokens=5, temperature=0)
    assert r.choices[0].text == tok.decode(alone(model, tok.encode("hello", allowed_special="all"), 5),
                                           skip_special_tokens=True)


def test_embeddings_from_an_encoder_folder(tmp_path):
    import transformers as T

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "hello", "world", "server", "the", "dog"]
    (tmp_path / "vocab.txt").write_text("\n".join(vocab) + "\n")
    T.BertTokenizerFast(str(tmp_path / "vocab.txt")).save_pretrained(tmp_path)
    cfg = T.BertConfig(vocab_size=len(vocab), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                       intermediate_size=32, max_position_embeddings=32)
    torch.manual_seed(0)
    T.BertModel(cfg).save_pretrained(tmp_path)
    proc, url = start([str(tmp_path), "--name", "bert"])
    try:
        c = openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0)
        r = c.embeddings.create(model="bert", input=["hello world", "the dog"])  # the client asks for base64
        model, tok = gu.from_pretrained(tmp_path), gu.Tokenizer.from_pretrained(tmp_path)
        from groundup.serve.embeddings import embed

        want, n = embed(model, tok, ["hello world", "the dog"])
        assert [d.index for d in r.data] == [0, 1] and r.usage.prompt_tokens == n
        torch.testing.assert_close(torch.tensor([d.embedding for d in r.data]), want, atol=1e-5, rtol=1e-5)
        floats = c.embeddings.create(model="bert", input="hello", encoding_format="float")
        assert len(floats.data[0].embedding) == 16
        assert httpx.post(url + "/v1/completions", json={"model": "bert", "prompt": "x"}).status_code == 400
    finally:
        stop(proc)


def test_lm_eval_local_completions_equals_its_hf_backend(server, lm_folder, monkeypatch):
    """lm-evaluation-harness scoring a multiple-choice task through the server (echo + logprobs of token-id
    prompts) reports what its own hf backend reports on the same folder."""
    lm_eval = pytest.importorskip("lm_eval")
    from lm_eval.tasks import TaskManager

    from groundup.eval import write_tasks

    tasks = lm_folder.parent / "tasks"
    write_tasks(tasks)
    tm = TaskManager(include_path=str(tasks), include_defaults=False)
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    common = dict(tasks=["tiny_mc"], num_fewshot=0, limit=12, task_manager=tm, bootstrap_iters=0, log_samples=True)
    hf = lm_eval.simple_evaluate(model="hf", batch_size=4, **common,
                                 model_args=f"pretrained={lm_folder},dtype=float32,max_length=150,device=cpu")
    api = lm_eval.simple_evaluate(model="local-completions", model_args=(
        f"base_url={server}/v1/completions,model=tiny-lm,tokenizer={lm_folder},tokenizer_backend=huggingface,"
        "max_length=150,num_concurrent=4,max_retries=1"), **common)
    for metric in ("acc,none", "acc_norm,none"):
        assert api["results"]["tiny_mc"][metric] == hf["results"]["tiny_mc"][metric]
    by_doc = {s["doc_id"]: s for s in hf["samples"]["tiny_mc"]}
    for s in api["samples"]["tiny_mc"]:
        want = [r[0] for r in by_doc[s["doc_id"]]["resps"]]
        got = [r[0] for r in s["resps"]]
        for (lp_got, greedy_got), (lp_want, greedy_want) in zip(got, want, strict=True):
            assert float(lp_got) == pytest.approx(float(lp_want), abs=1e-3) and greedy_got == greedy_want


def test_the_cascade_model_answers_from_the_first_confident_stage(client, local, lm_folder, lm_adapters):
    model, tok = local
    small = load_adapter(gu.from_pretrained(lm_folder).eval(), lm_adapters["lora0"])

    def answer(m, ids):  # greedy answer and its mean token log-probability under the model that wrote it
        out = alone(m, ids, 6)
        with torch.no_grad():
            full = torch.log_softmax(m(torch.tensor([ids + out])).float()[0], -1)
        return out, sum(float(full[len(ids) - 1 + j, t]) for j, t in enumerate(out)) / len(out)

    r = client.completions.create(model="cascade", prompt=TEXTS, max_tokens=6, temperature=0)
    stages = []
    for text, choice in zip(TEXTS, r.choices, strict=True):
        ids = tok.encode(text, allowed_special="all")
        (out0, s0), (out1, s1) = answer(small, ids), answer(model, ids)
        stage = 0 if s0 >= CASCADE_T else 1
        info = choice.model_extra["cascade"]
        assert info["stage"] == stage and info["model"] == ["tiny-lm:lora0", "tiny-lm"][stage]
        assert info["score"] == pytest.approx([s0, s1][stage], abs=1e-3)
        assert choice.text == tok.decode([out0, out1][stage], skip_special_tokens=True)
        stages.append((stage, round(s0, 2)))
    assert {st for st, _ in stages} == {0, 1}, stages  # the threshold splits these prompts: both paths ran
