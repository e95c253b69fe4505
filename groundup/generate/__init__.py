"""Decoding: KV-cached decoder-only generation and streaming (sampling.py holds the token choice,
speculative.py draft-model decoding); greedy and beam search for encoder-decoder models; entry.py is the
one ``generate`` for every architecture.

The package is callable: ``gu.generate(model, ids, ...)`` is ``gu.generate.generate(model, ids, ...)``, so
the public entry point and the package that holds it share one name.
"""

import sys
from types import ModuleType

from .causal import generate_uncached, stream
from .entry import generate
from .seq2seq import beam_search, greedy
from .speculative import SpeculativeStats

__all__ = ["SpeculativeStats", "beam_search", "generate", "generate_uncached", "greedy", "stream"]


class _CallablePackage(ModuleType):
    def __call__(self, *args, **kwargs):
        return generate(*args, **kwargs)


sys.modules[__name__].__class__ = _CallablePackage
