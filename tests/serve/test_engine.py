"""The engine decodes every request as gu.generate decodes it alone: at any concurrency, with requests joining
mid-flight, chunked prefill, prefix caching on or off, preemption forced by a tiny block budget, sampled with
a seed, with adapters mixed in one batch, on quantized layers; and one request's failure stops no other."""

from __future__ import annotations

import pytest
import torch
from serve_util import CharTokenizer, adapter_folders, base  # noqa: F401  (a fixture)

import groundup as gu
from groundup.peft import load_adapter
from groundup.serve.engine import Engine
from groundup.serve.params import ParamError, SamplingParams

PROMPTS = [[5, 9, 14, 3, 7], [11, 2, 8, 6, 4, 12, 13, 9, 10, 1, 15, 16, 17], [7, 7, 1],
           [3, 1, 4, 1, 5, 9, 2, 6, 5, 3], [20, 21], [8, 8, 8, 8, 8, 8, 8, 8, 8]]


def alone(model, prompt, n, **kw):
    return gu.generate(model, [prompt], n, **kw)[0, len(prompt):].tolist()


def greedy(n):
    return SamplingParams(max_tokens=n)


@pytest.mark.parametrize("opts", [dict(), dict(max_seqs=2, max_step_tokens=4), dict(prefix_caching=False),
                                  dict(block_size=2, n_blocks=24), dict(max_seqs=1, max_step_tokens=3)],
                         ids=["default", "chunked", "no-prefix-cache", "preempting", "one-at-a-time"])
def test_greedy_equals_generate_at_any_concurrency(opts):
    model = base()
    want = [alone(model, p, 10) for p in PROMPTS]
    engine = Engine(model, **opts)
    seqs = engine.run([(p, greedy(10)) for p in PROMPTS])
    assert [s[0].output for s in seqs] == want
    assert all(s[0].finish_reason == "length" for s in seqs)
    assert engine.pool.used_blocks == 0 and not engine.running  # everything given back
    if "n_blocks" in opts:
        assert engine.stats["preemptions"] > 0  # the budget really forced recomputation


def test_requests_joining_mid_flight_and_a_shared_prefix():
    model = base()
    system = [3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5, 8, 9, 7, 9, 3]  # four blocks of 4
    prompts = [[*system, 10 + i] for i in range(5)]
    engine = Engine(model, block_size=4, n_blocks=64)
    seqs = [engine.add(prompts[0], greedy(8))[0]]
    for p in prompts[1:]:  # each arrives two steps after the one before
        engine.step()
        engine.step()
        seqs.append(engine.add(p, greedy(8))[0])
    while engine.has_work:
        engine.step()
    assert [s.output for s in seqs] == [alone(model, p, 8) for p in prompts]
    assert engine.stats["cached_tokens"] == 16 * 4  # the later four read the system prompt from the cache


def test_seeded_sampling_equals_generate_and_repeats():
    model = base()
    opts = dict(temperature=0.9, top_k=20, top_p=0.9, repetition_penalty=1.3)
    want = alone(model, PROMPTS[1], 12, seed=5, **opts)
    engine = Engine(model)
    got = engine.run([(PROMPTS[1], SamplingParams(max_tokens=12, seed=5, **opts))])[0][0].output
    assert got == want
    again = engine.run([(PROMPTS[1], SamplingParams(max_tokens=12, seed=5, **opts))] * 3)
    assert [s[0].output for s in again] == [want] * 3  # the same seed, in a batch of three
    many = engine.run([(PROMPTS[1], SamplingParams(max_tokens=12, seed=5, n=3, **opts))])[0]
    assert [s.index for s in many] == [0, 1, 2] and many[0].output == want
    assert len({tuple(s.output) for s in many}) > 1  # n samples draw differently


def test_logprobs_are_the_models_own():
    model = base()
    prompt = PROMPTS[3]
    engine = Engine(model, max_step_tokens=4, max_seqs=2)  # the prompt comes in three chunks
    s = engine.run([(prompt, SamplingParams(max_tokens=3, logprobs=2, prompt_logprobs=1))])[0][0]
    full = torch.log_softmax(model(torch.tensor([prompt + s.output])).float()[0], -1)  # [T, V]
    assert s.prompt_logprobs[0] is None and len(s.prompt_logprobs) == len(prompt)
    for i in range(1, len(prompt)):
        lp, top = s.prompt_logprobs[i]
        assert lp == pytest.approx(float(full[i - 1, prompt[i]]), abs=1e-4)
        assert list(top) == [int(full[i - 1].argmax())]
    for j, (lp, top) in enumerate(s.logprobs):
        row = full[len(prompt) - 1 + j]
        assert lp == pytest.approx(float(row[s.output[j]]), abs=1e-4)
        assert len(top) == 2 and max(top.values()) == pytest.approx(float(row.max()), abs=1e-4)
    echo = engine.run([(prompt, SamplingParams(max_tokens=0, prompt_logprobs=0))])[0][0]
    assert echo.output == [] and [x[0] for x in echo.prompt_logprobs[1:]] == pytest.approx(
        [x[0] for x in s.prompt_logprobs[1:]], abs=1e-5)


def test_stop_strings_stop_ids_and_text():
    model, tok = base(), CharTokenizer()
    free = alone(model, PROMPTS[0], 12)
    text = tok.decode(free)
    stop = text[4:6]
    engine = Engine(model, tok)
    s = engine.run([(PROMPTS[0], SamplingParams(max_tokens=12, stop=[stop]))])[0][0]
    cut = text.find(stop)
    assert s.finish_reason == "stop" and s.text == text[:cut]
    assert s.output == free[: cut + len(stop)]  # up to the token that completed the stop string
    s = engine.run([(PROMPTS[0], SamplingParams(max_tokens=12, stop_token_ids=[free[3]]))])[0][0]
    assert s.output == free[: free.index(free[3]) + 1] and s.finish_reason == "stop"
    s = engine.run([(PROMPTS[0], SamplingParams(max_tokens=12))])[0][0]
    assert s.text == text and s.finish_reason == "length"


def test_adapters_mixed_in_one_batch_equal_each_alone(adapter_folders):
    engine = Engine(base(), adapters=adapter_folders)
    names = [None, "lora0", "lora1", "lora2", "lora3", "soft0", "soft1"]
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(len(names))]
    seqs = engine.run([(p, greedy(8)) for p in prompts], adapters=names)
    for name, p, s in zip(names, prompts, seqs, strict=True):
        model = base() if name is None else load_adapter(base(), adapter_folders[name])
        virtual = model.embed.prompt_ids() if name and name.startswith("soft") else []
        assert s[0].output == alone(model, virtual + p, 8), name
    outs = {tuple(s[0].output) for s in seqs}
    assert len(outs) == len(names)  # every adapter really changed the output


def test_an_adapter_registered_at_runtime(adapter_folders):
    engine = Engine(base(), adapters={"lora0": adapter_folders["lora0"]})
    first = engine.add(PROMPTS[0], greedy(6), adapter="lora0")[0]
    engine.step()
    engine.adapters.register("lora2", adapter_folders["lora2"])  # between two steps
    second = engine.add(PROMPTS[1], greedy(6), adapter="lora2")[0]
    while engine.has_work:
        engine.step()
    assert first.output == alone(load_adapter(base(), adapter_folders["lora0"]), PROMPTS[0], 6)
    assert second.output == alone(load_adapter(base(), adapter_folders["lora2"]), PROMPTS[1], 6)
    with pytest.raises(KeyError, match="unknown adapter 'nope'"):
        engine.add(PROMPTS[0], greedy(2), adapter="nope")


def test_quantized_layers():
    model = gu.quant.quantize(base(), "int8")
    want = [alone(model, p, 8) for p in PROMPTS[:3]]
    assert [s[0].output for s in Engine(model).run([(p, greedy(8)) for p in PROMPTS[:3]])] == want


def test_one_failing_request_stops_no_other():
    model = base()

    def fault(seq):
        if seq.prompt == PROMPTS[2] and len(seq.output) == 2:
            raise RuntimeError("injected")

    engine = Engine(model, fault=fault)
    seqs = engine.run([(p, greedy(6)) for p in PROMPTS[:4]])
    assert seqs[2][0].finish_reason == "error" and "injected" in seqs[2][0].error
    assert [seqs[i][0].output for i in (0, 1, 3)] == [alone(model, PROMPTS[i], 6) for i in (0, 1, 3)]
    assert engine.pool.used_blocks == 0


def test_abort_frees_the_blocks_at_once():
    engine = Engine(base(), block_size=4, n_blocks=32)
    a = engine.add(PROMPTS[1], greedy(20), request_id="a")
    b = engine.add(PROMPTS[0], greedy(20), request_id="b")
    for _ in range(3):
        engine.step()
    used = engine.pool.used_blocks
    engine.abort("a")
    assert a[0].finish_reason == "abort" and engine.pool.used_blocks < used
    while engine.has_work:
        engine.step()
    assert b[0].output == alone(base(), PROMPTS[0], 20)


def test_bad_requests_are_named():
    engine = Engine(base(), n_blocks=8, block_size=4)
    with pytest.raises(ParamError, match="temperature"):
        engine.add([1, 2], SamplingParams(temperature=-1))
    with pytest.raises(ParamError, match="top_p"):
        engine.add([1, 2], SamplingParams(top_p=0))
    with pytest.raises(ParamError, match="prompt: token ids must be in"):
        engine.add([1, 500], SamplingParams())
    with pytest.raises(ParamError, match="max_tokens.*KV blocks"):
        engine.add([1, 2], SamplingParams(max_tokens=40))
    with pytest.raises(ParamError, match="stop strings need a tokenizer"):
        engine.add([1, 2], SamplingParams(stop=["x"]))
    assert not engine.has_work  # nothing half-queued


def test_the_prefix_cache_never_serves_one_adapters_keys_to_another(adapter_folders):
    prompt = [3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5, 8, 9, 7, 9, 3, 2]  # four full blocks of 4
    engine = Engine(base(), block_size=4, adapters={"lora1": adapter_folders["lora1"]})
    plain = engine.run([(prompt, greedy(6))])[0][0]
    adapted = engine.run([(prompt, greedy(6))], adapters=["lora1"])[0][0]
    again = engine.run([(prompt, greedy(6))], adapters=["lora1"])[0][0]
    assert plain.output == alone(base(), prompt, 6)
    assert adapted.output == again.output == alone(load_adapter(base(), adapter_folders["lora1"]), prompt, 6)
    assert engine.stats["cached_tokens"] == 16  # only the second lora1 request found its blocks


def test_a_weighted_mix_of_adapters_in_one_request(adapter_folders):
    """"lora0@0.5+lora2@-1.5" decodes as the base with 0.5 x lora0's update and -1.5 x lora2's merged in."""
    from groundup.peft import merge_and_unload

    engine = Engine(base(), adapters={n: adapter_folders[n] for n in ("lora0", "lora1", "lora2")})
    spec = engine.adapters.mix("lora0@0.5+lora2@-1.5")
    mixed, single = engine.run([(PROMPTS[1], greedy(8)), (PROMPTS[1], greedy(8))], adapters=[spec, "lora1"])
    ref = base()
    ref_w = dict(ref.named_parameters())
    plain = dict(base().named_parameters())
    with torch.no_grad():
        for name, w in (("lora0", 0.5), ("lora2", -1.5)):
            merged = dict(merge_and_unload(load_adapter(base(), adapter_folders[name])).named_parameters())
            for k, p in merged.items():
                ref_w[k] += w * (p - plain[k])
    assert mixed[0].output == alone(ref, PROMPTS[1], 8)
    assert single[0].output == alone(load_adapter(base(), adapter_folders["lora1"]), PROMPTS[1], 8)
    assert mixed[0].output != alone(base(), PROMPTS[1], 8)
    with pytest.raises(KeyError, match="unknown adapter 'nope'"):
        engine.adapters.mix("lora0+nope")
    with pytest.raises(ValueError, match="name two or more"):
        engine.adapters.mix("lora0@2")
