"""Decoding through the paged KV cache (blocks from serve.BlockPool, keys in nn.kv_cache.PagedPool) gives
gu.generate's greedy tokens, for a batch of uneven prompts decoded together and with a shared prefix read
from the prefix cache instead of computed."""

from __future__ import annotations

import torch
from serve_util import base

import groundup as gu
from groundup.nn.kv_cache import BlockCache, DecoderCache, PagedBatch, PagedKVCache, PagedPool
from groundup.serve import BlockPool


def paged_greedy(model, prompts, n_new, *, block_size=4, n_blocks=40, prefix_caching=True):
    """Prefill each prompt alone (after its cached prefix), then decode all rows together."""
    cfg = model.config
    pool = BlockPool(n_blocks, block_size, prefix_caching=prefix_caching)
    layers = [PagedPool(n_blocks, block_size) for _ in range(cfg.n_layers)]

    def view(seqs, lens):
        batch = PagedBatch([pool.block_table(s) for s in seqs], lens, n_blocks, block_size)
        return DecoderCache([BlockCache(self_kv=PagedKVCache(p, batch)) for p in layers])

    out, lens, cached_counts = {}, {}, []
    with torch.no_grad():
        for s, prompt in enumerate(prompts):
            cached = pool.allocate(s, prompt)
            cached_counts.append(cached)
            ids = torch.tensor([prompt[cached:]])
            logits = model(ids, cache=view([s], [cached]), position_ids=torch.arange(cached, len(prompt))[None],
                           logits_to_keep=1)
            pool.commit(s, len(prompt))
            out[s], lens[s] = [int(logits[0, -1].argmax())], len(prompt)
        seqs = list(range(len(prompts)))
        for _ in range(n_new - 1):
            for s in seqs:
                assert pool.append(s, out[s][-1])  # a slot for the token this step writes
            width = max(lens[s] for s in seqs)
            mask = torch.tensor([[0] * (width - lens[s]) + [1] * (lens[s] + 1) for s in seqs])
            ids = torch.tensor([[out[s][-1]] for s in seqs])
            pos = torch.tensor([[lens[s]] for s in seqs])
            logits = model(ids, cache=view(seqs, [lens[s] for s in seqs]), attention_mask=mask, position_ids=pos)
            for r, s in enumerate(seqs):
                out[s].append(int(logits[r, -1].argmax()))
                lens[s] += 1
    return [out[s] for s in range(len(prompts))], cached_counts, pool


def reference(model, prompt, n):
    return gu.generate(model, [prompt], n)[0, len(prompt):].tolist()


def test_uneven_batch_decodes_as_generate():
    model = base(3)
    prompts = [[5, 9, 14, 3, 7], [11, 2, 8, 6, 4, 12, 13, 9, 10], [7, 7, 1]]
    got, cached, pool = paged_greedy(model, prompts, 12)
    assert got == [reference(model, p, 12) for p in prompts]
    assert cached == [0, 0, 0]
    assert pool.used_blocks == sum(pool.blocks_needed(len(p) + 11) for p in prompts)


def test_a_cached_prefix_is_read_not_computed_and_changes_nothing():
    model = base(4)
    system = [3, 1, 4, 1, 5, 9, 2, 6]  # two blocks of 4
    prompts = [[*system, 10, 11], [*system, 12], [*system, 13, 14, 15]]
    got, cached, pool = paged_greedy(model, prompts, 8)
    assert cached == [0, 8, 8]  # the later prompts found the system prompt's blocks
    assert got == [reference(model, p, 8) for p in prompts]
    assert pool.hits == 4
    plain, cached, _ = paged_greedy(model, prompts, 8, prefix_caching=False)
    assert plain == got and cached == [0, 0, 0]
