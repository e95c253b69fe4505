"""Evaluation: perplexity (strided, bits per byte, word perplexity; KL and top-1 agreement against a second
model), multiple-choice and generation tasks from local files, and a backend for lm-evaluation-harness.

    import groundup as gu
    model, tok = gu.from_pretrained(folder), gu.Tokenizer.from_pretrained(folder)
    gu.eval.text_perplexity(model, tok, [text], window=512, stride=256)[0].token_perplexity
    res = gu.eval.evaluate(model, tok, [gu.eval.load_task("tiny_mc")], num_fewshot=2)
    print(gu.eval.markdown({"mine": res}))

Importing this package registers the ``groundup`` model with lm-evaluation-harness when that is installed
(lazily: lm-eval imports groundup.eval.harness only when the model is asked for), so
``lm_eval.simple_evaluate(model="groundup", model_args="pretrained=DIR", ...)`` works after it.
"""

from __future__ import annotations

from .perplexity import Perplexity, perplexity, strided_windows, text_perplexity, word_count
from .run import context, evaluate, evaluate_task, exact_match, markdown, plot, shots_for
from .scoring import Scorer, rolling_windows
from .tasks import Task, TaskError, from_jsonl, from_yaml, load_task, write_tasks

__all__ = ["Perplexity", "Scorer", "Task", "TaskError", "context", "evaluate", "evaluate_task", "exact_match",
           "from_jsonl", "from_yaml", "load_task", "markdown", "perplexity", "plot", "register", "rolling_windows",
           "shots_for", "strided_windows", "text_perplexity", "word_count", "write_tasks"]

LM_EVAL_HINT = "pip install 'groundup[eval]' (lm-evaluation-harness)"


def register() -> bool:
    """Register the ``groundup`` model in lm-eval's model registry; False when lm-eval is not installed."""
    try:
        import lm_eval.models  # noqa: F401  (its own models first: an empty registry would skip them)
        from lm_eval.api.registry import model_registry
    except ImportError:
        return False
    if "groundup" not in model_registry:
        model_registry.register("groundup", target="groundup.eval.harness:GroundupLM")
    return True


register()
