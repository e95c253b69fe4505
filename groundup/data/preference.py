"""Preference data for alignment: which of several answers to a prompt is better.

Record shapes, one per JSONL line (read from each line's keys):

- pairs: {"prompt", "chosen", "rejected", "margin" (optional)}: one preferred and one dispreferred answer.
- rankings: {"prompt", "completions": [K answers], "ranking": [indices of completions, best first]}: a
  labeler's ranking of K answers becomes its K(K-1)/2 ordered pairs, as InstructGPT trains its reward model
  (Ouyang et al. 2022, section 3.5). The K answers stay one group, so each is forwarded once per step
  however many pairs it is in.
- unpaired (KTO): {"prompt", "completion", "label": true | false}: one answer marked desirable or not.

A prompt is a string (followed by the separator, as `groundup finetune` trains it) or a list of chat
messages [{"role", "content"}, ...], rendered by the tokenizer's chat template with the generation prompt;
an answer is then a string or a list of assistant messages, and its tokens are what the template adds after
the prompt. Answers end with the end-of-text token. Only answer tokens are scored (the loss mask).

Every bad record raises PreferenceDataError naming the file and line. Two things are repaired and counted
instead: a pair whose chosen and rejected answers tokenize the same teaches nothing and is dropped (a
warning gives the count and the first line); a prompt that with its longest answer would pass the context
is cut from the left (the answer and the prompt's end are what the model needs), also counted and warned.
A record whose answer alone fills the context is dropped, counted.
"""

from __future__ import annotations

import itertools
import random
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .instruct import SEPARATOR, InstructionDataError, read_records

PAIR_KEYS = {"prompt", "chosen", "rejected", "margin"}
RANKING_KEYS = {"prompt", "completions", "ranking"}
UNPAIRED_KEYS = {"prompt", "completion", "label"}


class PreferenceDataError(InstructionDataError):
    """A preference record that cannot be used, with the file and line it came from."""


@dataclass
class PreferenceGroup:
    """One prompt and its scored answers: ``pairs`` holds (chosen index, rejected index, margin) into
    ``completions``; ``labels`` (KTO) says which answers are desirable (None: not known)."""

    prompt: list[int]
    completions: list[list[int]]
    pairs: list[tuple[int, int, float]]
    labels: list[bool | None]
    source: str  # "file:line"
    kl: list[int] | None = None  # KTO: a mismatched answer (another prompt's) for the KL estimate
    ref: list[float] | None = None  # the reference model's summed log-prob of each answer, once computed
    kl_ref: float | None = None  # ... and of the mismatched answer

    @property
    def length(self) -> int:
        """Tokens of the prompt with its longest answer."""
        return len(self.prompt) + max(len(c) for c in self.completions)


@dataclass
class PreferenceStats:
    """What loading did: records read, pairs made, and what was repaired or dropped (first place of each)."""

    records: int = 0
    pairs: int = 0
    equal_dropped: int = 0
    truncated: int = 0
    too_long_dropped: int = 0
    first: dict[str, str] = field(default_factory=dict)

    def count(self, what: str, where: str) -> None:
        setattr(self, what, getattr(self, what) + 1)
        self.first.setdefault(what, where)

    def warn(self) -> None:
        """One warning per kind of repair, with its count and the first record it touched."""
        if self.equal_dropped:
            warnings.warn(f"{self.equal_dropped} pair(s) dropped: chosen and rejected are the same answer (first at "
                          f"{self.first['equal_dropped']})", stacklevel=3)
        if self.truncated:
            warnings.warn(f"{self.truncated} prompt(s) cut from the left to fit the context with their answers (first "
                          f"at {self.first['truncated']})", stacklevel=3)
        if self.too_long_dropped:
            warnings.warn(f"{self.too_long_dropped} record(s) dropped: an answer alone fills the context (first at "
                          f"{self.first['too_long_dropped']})", stacklevel=3)


class PreferenceFormatter:
    """Records -> PreferenceGroups with one tokenizer and separator."""

    def __init__(self, tokenizer: Any, separator: str = SEPARATOR) -> None:
        self.tok, self.separator = tokenizer, separator
        self.eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []

    def prompt_ids(self, prompt: Any, where: str) -> list[int]:
        """The tokens of a prompt (string + separator, or chat messages with the generation prompt)."""
        if isinstance(prompt, str):
            return self.tok.encode(prompt + self.separator)
        return self.tok.apply_chat_template(self._messages(prompt, where, "prompt"), add_generation_prompt=True)

    def answer_ids(self, prompt: Any, prompt_ids: list[int], answer: Any, where: str, name: str) -> list[int]:
        """The tokens an answer adds after its prompt."""
        if isinstance(prompt, str):
            if not isinstance(answer, str):
                raise PreferenceDataError(f"{where}: field {name!r} must be a string when the prompt is a string")
            ids = self.tok.encode(answer, add_special_tokens=False) + self.eos
        else:
            turns = [{"role": "assistant", "content": answer}] if isinstance(answer, str) else \
                self._messages(answer, where, name)
            full = self.tok.apply_chat_template(self._messages(prompt, where, "prompt") + turns)
            if full[: len(prompt_ids)] != prompt_ids:
                raise PreferenceDataError(f"{where}: the chat template renders the prompt differently once the "
                                          f"answer {name!r} follows, so its tokens cannot be located; use a template "
                                          "whose output for a conversation starts with its output for the prompt")
            ids = full[len(prompt_ids):]
        if not ids or ids == self.eos:
            raise PreferenceDataError(f"{where}: field {name!r} is empty")
        return ids

    @staticmethod
    def _messages(value: Any, where: str, name: str) -> list[dict]:
        if not isinstance(value, list) or not value or not all(
                isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
                for m in value):
            raise PreferenceDataError(f"{where}: field {name!r} must be a string or a non-empty list of "
                                      "{\"role\", \"content\"} messages")
        return [{"role": m["role"], "content": m["content"]} for m in value]

    def __call__(self, rec: Any, where: str, stats: PreferenceStats) -> PreferenceGroup | None:
        if not isinstance(rec, dict):
            raise PreferenceDataError(f"{where}: a record must be a JSON object, got {type(rec).__name__}")
        keys = set(rec)
        if "prompt" not in rec:
            raise PreferenceDataError(f"{where}: missing field 'prompt'")
        prompt = rec["prompt"]
        if not isinstance(prompt, (str, list)):
            raise PreferenceDataError(f"{where}: field 'prompt' must be a string or a list of messages")
        p = self.prompt_ids(prompt, where)
        if {"chosen", "rejected"} <= keys:
            self._only(keys, PAIR_KEYS, where, "a pair")
            margin = rec.get("margin", 0.0)
            if not isinstance(margin, (int, float)) or isinstance(margin, bool):
                raise PreferenceDataError(f"{where}: field 'margin' must be a number, got {margin!r}")
            answers = [self.answer_ids(prompt, p, rec[k], where, k) for k in ("chosen", "rejected")]
            pairs, labels = [(0, 1, float(margin))], [True, False]
        elif {"completions", "ranking"} <= keys:
            self._only(keys, RANKING_KEYS, where, "a ranking")
            comps, ranking = rec["completions"], rec["ranking"]
            if not isinstance(comps, list) or len(comps) < 2:
                raise PreferenceDataError(f"{where}: field 'completions' must be a list of at least 2 answers")
            if not isinstance(ranking, list) or sorted(ranking) != list(range(len(comps))):
                raise PreferenceDataError(f"{where}: field 'ranking' must list every index 0..{len(comps) - 1} of "
                                          f"'completions' once, best first; got {ranking!r}")
            answers = [self.answer_ids(prompt, p, c, where, f"completions[{i}]") for i, c in enumerate(comps)]
            # every ordered pair of the ranking: K(K-1)/2 of them
            pairs = [(a, b, 0.0) for a, b in itertools.combinations(ranking, 2)]
            top = set(ranking[: len(ranking) // 2])
            bottom = set(ranking[len(ranking) - len(ranking) // 2:])
            labels = [True if i in top else False if i in bottom else None for i in range(len(comps))]
        elif {"completion", "label"} <= keys:
            self._only(keys, UNPAIRED_KEYS, where, "an unpaired record")
            if not isinstance(rec["label"], bool):
                raise PreferenceDataError(f"{where}: field 'label' must be true or false, got {rec['label']!r}")
            answers = [self.answer_ids(prompt, p, rec["completion"], where, "completion")]
            pairs, labels = [], [rec["label"]]
        else:
            raise PreferenceDataError(f"{where}: unknown record with keys {sorted(keys)}; expected prompt + chosen + "
                                      "rejected, prompt + completions + ranking, or prompt + completion + label")
        kept = []
        for a, b, m in pairs:
            if answers[a] == answers[b]:
                stats.count("equal_dropped", where)
            else:
                kept.append((a, b, m))
        stats.records += 1
        if pairs and not kept:
            return None
        stats.pairs += len(kept)
        return PreferenceGroup(p, answers, kept, labels, where)

    @staticmethod
    def _only(keys: set, allowed: set, where: str, what: str) -> None:
        extra = keys - allowed
        if extra:
            raise PreferenceDataError(f"{where}: {what} does not take field(s) {sorted(extra)}; allowed: "
                                      f"{sorted(allowed)}")


def fit_context(group: PreferenceGroup, max_len: int, stats: PreferenceStats) -> PreferenceGroup | None:
    """The group cut to ``max_len`` tokens: its prompt shortened from the left (keeping at least one token)
    when prompt + longest answer is longer; None when an answer alone leaves no room for a prompt token."""
    if group.length <= max_len:
        return group
    longest = max(len(c) for c in group.completions)
    if longest >= max_len:
        stats.count("too_long_dropped", group.source)
        return None
    stats.count("truncated", group.source)
    return PreferenceGroup(group.prompt[len(group.prompt) - (max_len - longest):], group.completions, group.pairs,
                           group.labels, group.source)


def load_preferences(paths: Iterable[str | Path], tokenizer: Any, *, separator: str = SEPARATOR,
                     max_len: int | None = None, need: str = "pairs") -> tuple[list[PreferenceGroup], PreferenceStats]:
    """Every record of the JSONL files as PreferenceGroups (raising on the first bad one, with file and line),
    and what was repaired (also warned). ``max_len``: the context; longer groups are cut from the left.
    ``need``: "pairs" (reward models, DPO ...: unpaired records are refused) or "labels" (KTO: any shape)."""
    paths = list(paths)
    fmt = PreferenceFormatter(tokenizer, separator)
    stats = PreferenceStats()
    out = []
    for path in paths:
        for rec, where in read_records(path):
            group = fmt(rec, where, stats)
            if group is None:
                continue
            if need == "pairs" and not group.pairs:
                raise PreferenceDataError(f"{where}: an unpaired record (completion + label) has no pair to learn "
                                          "from; this method needs chosen/rejected or a ranking (KTO takes both)")
            if max_len is not None:
                group = fit_context(group, max_len, stats)
            if group is not None:
                out.append(group)
    stats.warn()
    if not out:
        raise PreferenceDataError(f"no usable records in {', '.join(str(p) for p in paths)}")
    return out, stats


@dataclass
class PromptRecord:
    """A prompt for online methods (PPO, GRPO): its tokens and the whole record (reward functions read
    fields such as the reference answer from it)."""

    prompt: list[int]
    record: dict
    source: str


def load_prompts(paths: Iterable[str | Path], tokenizer: Any, *, separator: str = SEPARATOR,
                 max_len: int | None = None) -> list[PromptRecord]:
    """The prompts of JSONL records (any record with a "prompt"; other fields are kept for reward
    functions). A prompt longer than ``max_len`` is cut from the left, with one warning for all."""
    paths = list(paths)
    fmt = PreferenceFormatter(tokenizer, separator)
    out, cut, first = [], 0, ""
    for path in paths:
        for rec, where in read_records(path):
            if not isinstance(rec, dict) or not isinstance(rec.get("prompt"), (str, list)):
                raise PreferenceDataError(f"{where}: a record needs a 'prompt' (a string or a list of messages)")
            ids = fmt.prompt_ids(rec["prompt"], where)
            if max_len is not None and len(ids) > max_len:
                ids, cut, first = ids[-max_len:], cut + 1, first or where
            out.append(PromptRecord(ids, rec, where))
    if cut:
        warnings.warn(f"{cut} prompt(s) cut from the left to {max_len} tokens (first at {first})", stacklevel=2)
    if not out:
        raise PreferenceDataError(f"no records in {', '.join(str(p) for p in paths)}")
    return out


def unpaired(groups: list[PreferenceGroup], seed: int = 0) -> list[PreferenceGroup]:
    """KTO's view (Ethayarajh et al. 2024): one group per labelled answer, in a seeded order, each with the
    answer of the group before it as its mismatched answer (trl's KL estimate pairs x_i with y_(i-1))."""
    flat = [PreferenceGroup(g.prompt, [c], [], [lab], g.source) for g in groups
            for c, lab in zip(g.completions, g.labels, strict=True) if lab is not None]
    if not flat:
        raise PreferenceDataError("no labelled answers for KTO: give chosen/rejected pairs, rankings (top half "
                                  "desirable, bottom half not) or completion + label records")
    random.Random(seed).shuffle(flat)
    for i, g in enumerate(flat):
        g.kl = flat[i - 1].completions[0]
    return flat


@dataclass
class PreferenceBatch:
    """The rows of a batch of groups, each answer once: ids [R, T] (prompt + answer, right-padded), mask
    [R, T] (answer tokens), pairs as row indices chosen [P] / rejected [P] with margin [P], labels [R] (1
    desirable, 0 not, -1 unknown), ref [R] (reference log-probs, when computed) and for KTO the mismatched
    rows kl_ids / kl_mask [R, T'] with kl_ref [R]."""

    ids: torch.Tensor
    mask: torch.Tensor
    chosen: torch.Tensor
    rejected: torch.Tensor
    margin: torch.Tensor
    labels: torch.Tensor
    ref: torch.Tensor | None = None
    kl_ids: torch.Tensor | None = None
    kl_mask: torch.Tensor | None = None
    kl_ref: torch.Tensor | None = None

    def to(self, device: torch.device | str) -> PreferenceBatch:
        return PreferenceBatch(**{k: v.to(device) if torch.is_tensor(v) else v for k, v in vars(self).items()})

    @property
    def tokens(self) -> int:
        return int(self.mask.shape[0] * self.mask.shape[1])

    @property
    def real(self) -> torch.Tensor:
        """[R, T] the rows' own tokens (prompt and answer; the answer ends each row), not the padding."""
        pos = torch.arange(self.mask.shape[1], device=self.mask.device)
        return pos <= last_index(self.mask).unsqueeze(1)


def last_index(mask: torch.Tensor) -> torch.Tensor:
    """[R] the position of each row's last True in mask [R, T] (a row's last real token; -1 for none)."""
    pos = torch.arange(mask.shape[1], device=mask.device).expand_as(mask)
    return torch.where(mask.bool(), pos, torch.full_like(pos, -1)).max(dim=1).values


def pad_rows(rows: list[tuple[list[int], list[int]]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids [R, T], mask [R, T] bool) of (prompt, answer) rows, right-padded: causal attention never lets a
    real position see the padding after it, so no attention mask is needed."""
    T = max(len(p) + len(a) for p, a in rows)
    ids = torch.full((len(rows), T), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), T), dtype=torch.bool)
    for i, (p, a) in enumerate(rows):
        ids[i, : len(p) + len(a)] = torch.tensor(p + a)
        mask[i, len(p): len(p) + len(a)] = True
    return ids, mask


def collate_groups(groups: list[PreferenceGroup], pad_id: int) -> PreferenceBatch:
    """One PreferenceBatch of the groups (see PreferenceBatch)."""
    rows, chosen, rejected, margin, labels, ref = [], [], [], [], [], []
    for g in groups:
        base = len(rows)
        rows += [(g.prompt, c) for c in g.completions]
        for a, b, m in g.pairs:
            chosen.append(base + a)
            rejected.append(base + b)
            margin.append(m)
        labels += [-1 if lab is None else int(lab) for lab in g.labels]
        ref += g.ref if g.ref is not None else []
    ids, mask = pad_rows(rows, pad_id)
    batch = PreferenceBatch(ids, mask, torch.tensor(chosen, dtype=torch.long),
                            torch.tensor(rejected, dtype=torch.long), torch.tensor(margin, dtype=torch.float32),
                            torch.tensor(labels, dtype=torch.long),
                            torch.tensor(ref, dtype=torch.float32) if len(ref) == len(rows) else None)
    if all(g.kl is not None for g in groups):
        batch.kl_ids, batch.kl_mask = pad_rows([(g.prompt, g.kl) for g in groups], pad_id)
        if all(g.kl_ref is not None for g in groups):
            batch.kl_ref = torch.tensor([g.kl_ref for g in groups], dtype=torch.float32)
    return batch


class PreferenceData:
    """Shuffled training batches and fixed validation batches of PreferenceGroups, with the interface the
    training loop reads (next_batch, val_batches, state_dict, load_state_dict, block_size). A batch of n
    holds n groups (prompts); an epoch is one pass in a seeded order, and a resumed run continues it."""

    def __init__(self, train: list[PreferenceGroup], val: list[PreferenceGroup], *, pad_id: int,
                 seed: int = 0) -> None:
        if not train:
            raise PreferenceDataError("no training records")
        self.train, self.val, self.pad_id, self.seed = train, val, pad_id, seed
        self.block_size = max(g.length for g in train + val)
        self.drawn = 0
        self._order: tuple[int, list[int]] = (-1, [])

    @classmethod
    def split(cls, groups: list[PreferenceGroup], *, val_fraction: float, pad_id: int,
              seed: int = 0) -> PreferenceData:
        """Hold out a seeded ``val_fraction`` of the groups (at least one when there are two or more)."""
        order = torch.randperm(len(groups), generator=torch.Generator().manual_seed(seed)).tolist()
        n_val = min(len(groups) - 1, max(1 if val_fraction > 0 else 0, round(val_fraction * len(groups))))
        return cls([groups[i] for i in order[n_val:]], [groups[i] for i in order[:n_val]], pad_id=pad_id,
                   seed=seed)

    def _index(self, k: int) -> int:
        epoch, pos = divmod(k, len(self.train))
        if self._order[0] != epoch:  # one seeded shuffle per epoch
            gen = torch.Generator().manual_seed(self.seed * 7919 + epoch)
            self._order = (epoch, torch.randperm(len(self.train), generator=gen).tolist())
        return self._order[1][pos]

    def next_batch(self, batch_size: int, *, rank: int = 0, world: int = 1) -> PreferenceBatch:
        """The next global batch of ``batch_size`` groups; this rank's share."""
        rows = [self.train[self._index(self.drawn + i)] for i in range(rank, batch_size, world)]
        self.drawn += batch_size
        return collate_groups(rows, self.pad_id)

    def val_batches(self, batch_size: int, max_batches: int):
        for b in range(min(max_batches, -(-len(self.val) // batch_size))):
            yield collate_groups(self.val[b * batch_size: (b + 1) * batch_size], self.pad_id)

    def state_dict(self) -> dict:
        return {"drawn": self.drawn, "seed": self.seed, "groups": len(self.train)}

    def load_state_dict(self, state: dict) -> None:
        if state["groups"] != len(self.train):
            raise ValueError(f"the checkpoint's data has {state['groups']} training records, this data "
                             f"{len(self.train)}: resume with the same files and --val-fraction")
        self.drawn, self.seed = int(state["drawn"]), int(state["seed"])
