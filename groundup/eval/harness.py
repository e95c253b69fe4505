"""groundup as a model backend of lm-evaluation-harness (the `lm-eval` package, an optional dependency).

    groundup lm-eval --model groundup --model_args pretrained=DIR,dtype=float32 --tasks hellaswag ...
    lm_eval.simple_evaluate(model="groundup", model_args="pretrained=DIR", ...)   # after import groundup.eval

``model_args``: ``pretrained`` (an HF folder or a .gguf file), ``dtype`` (float32, bfloat16, float16; default:
the checkpoint's), ``adapter`` (a peft adapter folder), ``max_length`` (the window; default the model's
context), ``device`` (default cpu), ``share_contexts`` (default true: a context shared by several requests
runs once). The harness's ``--batch_size`` is the rows per forward ("auto" means 16).

The three request types go to groundup.eval.scoring.Scorer, which tokenizes and truncates as the harness's
`hf` backend does; results are handed to the harness's cache hook as they are made, so `--use_cache` works.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

try:
    from lm_eval.api.model import LM
except ImportError as e:  # pragma: no cover - the registry only imports this module when lm-eval exists
    raise ImportError("the lm-eval backend needs lm-evaluation-harness: pip install 'groundup[eval]'") from e

from .run import load_model
from .scoring import Scorer

log = logging.getLogger("groundup.eval")


def _flag(value: Any) -> bool:
    return value if isinstance(value, bool) else str(value).lower() in ("1", "true", "yes")


class GroundupLM(LM):
    """lm-eval's LM interface on a groundup CausalLM and Tokenizer."""

    def __init__(self, pretrained: str | None = None, dtype: str | None = "auto", adapter: str | None = None,
                 batch_size: int | str | None = 16, max_length: int | None = None, device: str | None = "cpu",
                 share_contexts: Any = True, model=None, tokenizer=None, **unused: Any) -> None:
        super().__init__()
        if model is None:
            if pretrained is None:
                raise ValueError("--model_args pretrained=DIR is required (a local HF folder or .gguf file)")
            model, tokenizer, prefix = load_model(pretrained, dtype, adapter)
        else:
            prefix = []
        device = str(device or "cpu")
        if device.startswith("cuda") and not torch.cuda.is_available():
            # the harness's command line asks for cuda by default; a CPU machine runs on its CPU
            log.warning("device=%s is not available: running on the CPU", device)
            device = "cpu"
        if device != "cpu":
            model = model.to(device)
        self._device = torch.device(device)
        self.model = model.eval()
        self.tokenizer = tokenizer
        bs = str(batch_size if batch_size is not None else 16)
        self.scorer = Scorer(self.model, tokenizer, max_length=int(max_length) if max_length else None,
                             batch_size=16 if bs.startswith("auto") else int(bs), share_contexts=_flag(share_contexts),
                             prefix_ids=prefix)
        self.pretrained = str(pretrained)

    # -- the three requests -----------------------------------------------------------------------------------
    def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        args = [r.args for r in requests]
        self.scorer.progress = not disable_tqdm
        out = self.scorer.loglikelihood([(c, x) for c, x in args])
        for a, res in zip(args, out, strict=True):
            self.cache_hook.add_partial("loglikelihood", a, res)
        return out

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        texts = [r.args[0] for r in requests]
        self.scorer.progress = not disable_tqdm
        out = self.scorer.loglikelihood_rolling(texts)
        for t, res in zip(texts, out, strict=True):
            self.cache_hook.add_partial("loglikelihood_rolling", (t,), res)
        return out

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        out: list[str | None] = [None] * len(requests)
        groups: dict[str, list[int]] = {}
        for i, r in enumerate(requests):  # one batch never mixes generation settings
            groups.setdefault(repr(sorted(r.args[1].items())), []).append(i)
        self.scorer.progress = not disable_tqdm
        for idx in groups.values():
            kw = dict(requests[idx[0]].args[1])
            until = kw.pop("until", None)
            until = [until] if isinstance(until, str) else list(until or [])
            n = int(kw.pop("max_gen_toks", kw.pop("max_new_tokens", 256)))
            sampling = _sampling(kw)
            res = self.scorer.generate_until([requests[i].args[0] for i in idx], until, n, **sampling)
            for i, text in zip(idx, res, strict=True):
                out[i] = text
                self.cache_hook.add_partial("generate_until", requests[i].args, text)
        return out  # type: ignore[return-value]

    # -- what else the harness asks -----------------------------------------------------------------------------
    @property
    def tokenizer_name(self) -> str:
        return self.pretrained.replace("/", "__")

    def chat_template(self, chat_template: bool | str = False) -> str | None:
        return self.tokenizer.chat_template if chat_template else None

    def apply_chat_template(self, chat_history: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        return self.tokenizer.apply_chat_template(chat_history, add_generation_prompt=add_generation_prompt,
                                                  tokenize=False)

    def get_model_info(self) -> dict[str, Any]:
        p = next(self.model.parameters())
        return {"model_num_parameters": sum(x.numel() for x in self.model.parameters()), "model_dtype": str(p.dtype),
                "model_revision": "local", "model_sha": ""}


def _sampling(kw: dict[str, Any]) -> dict[str, Any]:
    """The harness's sampling settings -> generate()'s (greedy unless do_sample with a temperature > 0)."""
    if not _flag(kw.get("do_sample", False)) or float(kw.get("temperature", 1.0) or 0.0) == 0.0:
        return {}
    return {k: v for k, v in (("temperature", float(kw.get("temperature", 1.0))), ("top_k", kw.get("top_k")),
                               ("top_p", kw.get("top_p")), ("seed", kw.get("seed"))) if v is not None}
