"""Instruction data for fine-tuning: records -> (prompt tokens, answer tokens), loss on the answer only.

Three record shapes, one per JSONL line (the shape is read from each line's keys):

- prompt/completion: {"prompt": ..., "completion": ...}. The model sees prompt + separator + completion;
  the separator (default "\\n\\n###\\n\\n") marks where the answer starts, so it must not occur inside a
  prompt (warned, with file and line).
- instruction/context/response (Dolly, Alpaca): {"instruction", "context" or "input" (optional),
  "response" or "output"}, rendered with an Alpaca-style template.
- conversations: {"messages": [{"role", "content"}, ...]} or LLaVA's {"conversations": [{"from", "value"},
  ...]}, rendered with the tokenizer's chat template; every assistant turn is an answer.

Prompt and answer are encoded separately and joined (plus the end-of-text token after an answer), so a
prompt is encoded at training time exactly as ``generate`` encodes it later. Targets are the next tokens
of the answer positions only; prompt positions get -100, so their tokens get no gradient (Ouyang et al.,
2022 train on completions only). A bad record raises InstructionDataError naming the file and line; no
record is dropped without an error.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

SEPARATOR = "\n\n###\n\n"
ALPACA = ("Below is an instruction that describes a task{with_input}. Write a response that appropriately "
          "completes the request.\n\n### Instruction:\n{instruction}\n\n{input_block}### Response:\n")
ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}


class InstructionDataError(ValueError):
    """A record that cannot be used, with the file and line it came from."""


@dataclass
class Example:
    """One tokenized record: ids [T] and a mask of answer tokens (1 = trained on)."""

    ids: list[int]
    answer: list[int]  # 1 where the token belongs to an answer
    source: str  # "file:line"

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(input ids [T - 1], targets [T - 1]): position t predicts token t + 1 when that token is an answer
        token, else -100."""
        ids = torch.tensor(self.ids)
        keep = torch.tensor(self.answer[1:], dtype=torch.bool)
        return ids[:-1], torch.where(keep, ids[1:], torch.full_like(ids[1:], -100))


def _text(rec: dict, keys: tuple[str, ...], where: str, required: bool = True) -> str:
    for k in keys:
        if k in rec:
            if not isinstance(rec[k], str):
                raise InstructionDataError(f"{where}: field {k!r} must be a string, got {type(rec[k]).__name__}")
            return rec[k]
    if required:
        raise InstructionDataError(f"{where}: missing field {' or '.join(repr(k) for k in keys)}")
    return ""


def render_instruction(instruction: str, context: str = "") -> str:
    """The prompt of an instruction record (Alpaca's template; the context block only when given)."""
    if context:
        return ALPACA.format(with_input=", paired with an input that provides further context",
                             instruction=instruction, input_block=f"### Input:\n{context}\n\n")
    return ALPACA.format(with_input="", instruction=instruction, input_block="")


def _messages(rec: dict, where: str) -> list[dict]:
    if "messages" in rec:
        raw, role_key, text_key = rec["messages"], "role", "content"
    else:
        raw, role_key, text_key = rec["conversations"], "from", "value"
    if not isinstance(raw, list) or not raw:
        raise InstructionDataError(f"{where}: the conversation must be a non-empty list of turns")
    out = []
    for i, turn in enumerate(raw):
        if not isinstance(turn, dict) or role_key not in turn or text_key not in turn:
            raise InstructionDataError(f"{where}: turn {i} needs {role_key!r} and {text_key!r}")
        role = ROLES.get(str(turn[role_key]).lower())
        if role is None:
            raise InstructionDataError(f"{where}: turn {i} has {role_key}={turn[role_key]!r}; use one of "
                                       f"{', '.join(sorted(ROLES))}")
        content = str(turn[text_key]).replace("<image>", "").strip() if role_key == "from" else turn[text_key]
        out.append({"role": role, "content": content})
    if not any(m["role"] == "assistant" for m in out):
        raise InstructionDataError(f"{where}: the conversation has no assistant turn to train on")
    return out


class Formatter:
    """Turns records into Examples with one tokenizer and one separator."""

    def __init__(self, tokenizer: Any, separator: str = SEPARATOR, eos: bool = True) -> None:
        self.tok, self.separator = tokenizer, separator
        self.eos = [tokenizer.eos_token_id] if eos and tokenizer.eos_token_id is not None else []

    def encode_prompt(self, prompt: str) -> list[int]:
        return self.tok.encode(prompt)

    def encode_answer(self, answer: str) -> list[int]:
        return self.tok.encode(answer, add_special_tokens=False) + self.eos

    def pair(self, prompt: str, answer: str, where: str) -> Example:
        p, a = self.encode_prompt(prompt), self.encode_answer(answer)
        if not a:
            raise InstructionDataError(f"{where}: the answer is empty")
        return Example(p + a, [0] * len(p) + [1] * len(a), where)

    def prompt_of(self, rec: dict, where: str) -> tuple[str, str]:
        """(prompt text, answer text) of a prompt/completion or instruction record."""
        if "prompt" in rec:
            prompt = _text(rec, ("prompt",), where)
            if self.separator and self.separator in prompt:
                warnings.warn(f"{where}: the prompt contains the separator {self.separator!r}, so the model "
                              "cannot tell where the answer starts; pick another separator", stacklevel=3)
            return prompt + self.separator, _text(rec, ("completion",), where)
        prompt = render_instruction(_text(rec, ("instruction",), where),
                                    _text(rec, ("context", "input"), where, required=False))
        return prompt, _text(rec, ("response", "output"), where)

    def __call__(self, rec: Any, where: str) -> Example:
        if not isinstance(rec, dict):
            raise InstructionDataError(f"{where}: a record must be a JSON object, got {type(rec).__name__}")
        if "messages" in rec or "conversations" in rec:
            return self.conversation(_messages(rec, where), where)
        if "prompt" in rec or "instruction" in rec:
            return self.pair(*self.prompt_of(rec, where), where)
        raise InstructionDataError(f"{where}: unknown record with keys {sorted(rec)}; expected prompt/completion, "
                                   "instruction/response or messages/conversations")

    def conversation(self, messages: list[dict], where: str) -> Example:
        """The chat-template rendering, with every assistant turn marked as answer: the tokens the template
        adds for turn i are those of the first i + 1 turns minus those of the first i (plus the
        generation prompt), which must extend each other."""
        ids: list[int] = []
        answer: list[int] = []
        for i, m in enumerate(messages):
            if m["role"] == "assistant":
                before = self.tok.apply_chat_template(messages[:i], add_generation_prompt=True) if i else []
                self._extend(ids, answer, before, 0, where)
            full = self.tok.apply_chat_template(messages[: i + 1])
            self._extend(ids, answer, full, int(m["role"] == "assistant"), where)
        return Example(ids, answer, where)

    @staticmethod
    def _extend(ids: list[int], answer: list[int], full: list[int], mark: int, where: str) -> None:
        if full[: len(ids)] != ids:
            raise InstructionDataError(f"{where}: the chat template renders a conversation differently once a "
                                       "turn is added, so answer tokens cannot be located; use a template whose "
                                       "output for n turns starts with its output for fewer")
        answer.extend([mark] * (len(full) - len(ids)))
        ids.extend(full[len(ids):])


def prefixed(example: Example, ids: list[int]) -> Example:
    """The example with ``ids`` (e.g. a soft prompt's virtual tokens) in front, not trained on."""
    return Example(ids + example.ids, [0] * len(ids) + example.answer, example.source)


def read_records(path: str | Path) -> Iterator[tuple[Any, str]]:
    """(record, "file:line") for each non-blank line of a JSONL file."""
    path = Path(path)
    if not path.is_file():
        raise InstructionDataError(f"{path}: no such file")
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                yield json.loads(line), f"{path}:{n}"
            except json.JSONDecodeError as e:
                raise InstructionDataError(f"{path}:{n}: not valid JSON ({e.msg} at column {e.colno})") from None


def load_examples(paths: Iterable[str | Path], tokenizer: Any, *, separator: str = SEPARATOR,
                  max_len: int | None = None) -> list[Example]:
    """Every record of the JSONL files as Examples; raises on the first bad one (file and line), including
    one longer than ``max_len`` tokens."""
    fmt = Formatter(tokenizer, separator)
    out = []
    for path in paths:
        for rec, where in read_records(path):
            ex = fmt(rec, where)
            if max_len is not None and len(ex.ids) - 1 > max_len:
                raise InstructionDataError(f"{where}: {len(ex.ids)} tokens, more than the block of {max_len + 1}; "
                                           "shorten the record or raise --block-size")
            out.append(ex)
    if not out:
        raise InstructionDataError(f"no records in {', '.join(str(p) for p in paths)}")
    return out


def collate(examples: list[Example], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded (inputs [B, T], targets [B, T]); padding has target -100. Causal attention never lets a
    real position see the padding after it, so no attention mask is needed."""
    pairs = [ex.tensors() for ex in examples]
    T = max(x.shape[0] for x, _ in pairs)
    x = torch.full((len(pairs), T), pad_id, dtype=torch.long)
    y = torch.full((len(pairs), T), -100, dtype=torch.long)
    for i, (xi, yi) in enumerate(pairs):
        x[i, : xi.shape[0]], y[i, : yi.shape[0]] = xi, yi
    return x, y


class InstructionData:
    """Shuffled training batches and fixed validation batches of Examples, with the data-mixture interface
    the training loop reads (next_batch, val_batches, state_dict, block_size). An epoch is one pass in a
    seeded order; a resumed run continues the same order.

    group_by_length: the batch size to group for (0: off). Each epoch's shuffled order is cut into groups
    of 50 batches; a group is sorted by length, cut into batches of similar length (a batch is as long as
    its longest row, so they pad little), and its batches are shuffled, so that consecutive batches are
    not all long or all short (sorting alone trains on runs of one kind of example, which on Goat-style
    data doubled the validation loss at 300 steps). Batches stay aligned across epoch ends.
    """

    def __init__(self, train: list[Example], val: list[Example], *, pad_id: int, seed: int = 0,
                 group_by_length: int = 0) -> None:
        if not train:
            raise InstructionDataError("no training examples")
        self.train, self.val, self.pad_id, self.seed = train, val, pad_id, seed
        self.group_by_length = group_by_length
        self.block_size = max(len(ex.ids) - 1 for ex in train + val)
        self.drawn = 0  # training examples drawn so far
        self._order: tuple[int, list[int]] = (-1, [])  # (epoch, its order), the one epoch in use

    @classmethod
    def split(cls, examples: list[Example], *, val_fraction: float, pad_id: int, seed: int = 0,
              group_by_length: int = 0) -> InstructionData:
        """Hold out a seeded ``val_fraction`` of the examples (at least one when there are two or more)."""
        order = torch.randperm(len(examples), generator=torch.Generator().manual_seed(seed)).tolist()
        n_val = min(len(examples) - 1, max(1 if val_fraction > 0 else 0, round(val_fraction * len(examples))))
        val = [examples[i] for i in order[:n_val]]
        return cls([examples[i] for i in order[n_val:]], val, pad_id=pad_id, seed=seed,
                   group_by_length=group_by_length)

    def _index(self, k: int) -> int:
        epoch, pos = divmod(k, len(self.train))
        if self._order[0] != epoch:
            gen = torch.Generator().manual_seed(self.seed * 7919 + epoch)
            order = torch.randperm(len(self.train), generator=gen).tolist()
            if self.group_by_length:
                order = self._grouped(order, epoch, gen)
            self._order = (epoch, order)
        return self._order[1][pos]

    def _grouped(self, order: list[int], epoch: int, gen: torch.Generator) -> list[int]:
        B = self.group_by_length
        head = -epoch * len(self.train) % B  # the rows that complete a batch begun in the previous epoch
        out, rest = order[:head], order[head:]
        for start in range(0, len(rest), 50 * B):
            group = sorted(rest[start: start + 50 * B], key=lambda i: len(self.train[i].ids))  # stable: seeded
            batches = [group[i: i + B] for i in range(0, len(group), B)]
            full = [b for b in batches if len(b) == B]  # a short last batch stays last, keeping alignment
            for j in torch.randperm(len(full), generator=gen).tolist():
                out += full[j]
            out += [i for b in batches if len(b) < B for i in b]
        return out

    def next_batch(self, batch_size: int, *, rank: int = 0, world: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        """The next global batch of ``batch_size`` examples; this rank's rows."""
        if self.group_by_length and batch_size != self.group_by_length:
            raise ValueError(f"batches were grouped by length for batch size {self.group_by_length}, not "
                             f"{batch_size}")
        rows = [self.train[self._index(self.drawn + i)] for i in range(rank, batch_size, world)]
        self.drawn += batch_size
        return collate(rows, self.pad_id)

    def val_batches(self, batch_size: int, max_batches: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for b in range(min(max_batches, -(-len(self.val) // batch_size))):
            yield collate(self.val[b * batch_size: (b + 1) * batch_size], self.pad_id)

    def state_dict(self) -> dict:
        return {"drawn": self.drawn, "seed": self.seed, "examples": len(self.train),
                "group_by_length": self.group_by_length}

    def load_state_dict(self, state: dict) -> None:
        if state["examples"] != len(self.train):
            raise ValueError(f"the checkpoint's data has {state['examples']} training examples, this data "
                             f"{len(self.train)}: resume with the same files and --val-fraction")
        if state.get("group_by_length", 0) != self.group_by_length:
            raise ValueError(f"the checkpoint's batches were grouped by length for batch size "
                             f"{state.get('group_by_length', 0)} (0: not grouped), this run's for "
                             f"{self.group_by_length}: resume with the same --batch-size and --group-by-length")
        self.drawn, self.seed = int(state["drawn"]), int(state["seed"])

    def epochs(self, tokens: float) -> dict[str, float]:
        return {"instructions": self.drawn / len(self.train)}
