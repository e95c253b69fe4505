"""Evaluation tasks from local files: lm-evaluation-harness's YAML task format (the part of it that needs no
Python: local JSON data, Jinja templates, regex filters) and bare JSONL files with documented fields.

A YAML task (the same file runs through `groundup eval` and through lm-eval with --include_path):

    task: tiny_mc
    dataset_path: json
    dataset_kwargs: {data_files: {test: tiny_mc.jsonl, train: tiny_mc_shots.jsonl}}
    test_split: test
    fewshot_split: train              # optional: shots are drawn from here (else from the test docs, not the
                                      # one being asked)
    output_type: multiple_choice      # or generate_until, loglikelihood_rolling
    doc_to_text: "Question: {{question}}\\nAnswer:"
    doc_to_choice: choices            # a field, a list, or a template that renders a Python list
    doc_to_target: answer             # an index into the choices (or the right choice's text)
    num_fewshot: 0
    generation_kwargs: {until: ["\\n\\n"], max_gen_toks: 32}      # generate_until
    filter_list: [{name: get-answer, filter: [{function: regex, regex_pattern: "#### (-?[0-9]+)"},
                                              {function: take_first}]}]
    metric_list: [{metric: exact_match, ignore_case: true}]

Relative data_files are read from the YAML's folder (lm-eval reads them from its working directory:
`write_tasks` writes copies with absolute paths). A field name in doc_to_* means the field's value; any
other string is a Jinja template over the record's fields.

A bare JSONL file is a task named after the file, by the fields of its records:
- ``question``, ``choices`` (a list), ``answer`` (the index of the right choice): multiple choice,
  prompt "Question: {question}\\nAnswer:", each choice scored after a space;
- ``question`` and ``answer`` (a string): generation, greedy until a blank line, exact match of the answer;
- ``text``: rolling log-likelihood (perplexity) of the text.
Every record is checked before any model runs; an error names the file and line.
"""

from __future__ import annotations

import ast
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import jinja2
import yaml

from ..data.instruct import InstructionDataError, read_records

Kind = Literal["multiple_choice", "generate_until", "loglikelihood_rolling"]
KINDS = ("multiple_choice", "generate_until", "loglikelihood_rolling")
TASKS_DIR = Path(__file__).parent / "tasks"  # the tasks groundup ships


class TaskError(ValueError):
    """A task file or record that cannot be evaluated; the message names the file (and line)."""


def _regex_replace(s: str, pattern: str, repl: str, count: int = 0) -> str:
    return re.sub(pattern, repl, s, count=count)


_ENV = jinja2.Environment(loader=jinja2.BaseLoader(), undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
_ENV.filters["regex_replace"] = _regex_replace


@dataclass
class Doc:
    """One record and where it came from ("file:line")."""

    fields: dict[str, Any]
    where: str


@dataclass
class Task:
    """An evaluation task: its documents, how to turn one into a prompt, what to score."""

    name: str
    kind: Kind
    docs: list[Doc]
    source: str  # the file it was read from
    doc_to_text: Any = "{{question}}"
    doc_to_target: Any = "answer"
    doc_to_choice: Any = None
    fewshot_docs: list[Doc] | None = None  # None: shots come from the test docs, never the doc being asked
    num_fewshot: int = 0
    fewshot_sampler: str = "default"  # or "first_n"
    target_delimiter: str = " "
    fewshot_delimiter: str = "\n\n"
    description: str = ""
    until: list[str] = field(default_factory=lambda: ["\n\n"])
    max_gen_toks: int = 256
    filters: list[tuple[str, int, str]] = field(default_factory=list)  # (regex, group_select, fallback)
    metrics: list[dict[str, Any]] = field(default_factory=list)

    # -- the templates --------------------------------------------------------------------------------------
    def _field(self, spec: Any, doc: Doc, what: str) -> Any:
        if isinstance(spec, (int, list)):
            return spec
        if not isinstance(spec, str):
            raise TaskError(f"{self.source}: {what} must be a field name, a template, a number or a list")
        if spec in doc.fields:
            return doc.fields[spec]
        try:
            return _ENV.from_string(spec).render(**doc.fields)
        except jinja2.UndefinedError as e:
            raise TaskError(f"{doc.where}: {what} {spec!r} needs a field the record lacks ({e.message})") from None
        except jinja2.TemplateError as e:
            raise TaskError(f"{self.source}: {what} {spec!r} is not a valid template ({e})") from None

    def text(self, doc: Doc) -> str:
        out = self._field(self.doc_to_text, doc, "doc_to_text")
        if not isinstance(out, str):
            raise TaskError(f"{doc.where}: doc_to_text gave {type(out).__name__}, not text")
        return out

    def choices(self, doc: Doc) -> list[str]:
        out = self._field(self.doc_to_choice, doc, "doc_to_choice")
        if isinstance(out, str):
            try:
                out = ast.literal_eval(out)
            except (ValueError, SyntaxError):
                raise TaskError(f"{doc.where}: doc_to_choice rendered {out!r}, not a list") from None
        if isinstance(out, dict):
            out = list(out.values())
        if not isinstance(out, list) or len(out) < 2 or not all(isinstance(c, str) for c in out):
            raise TaskError(f"{doc.where}: the choices must be a list of two or more strings, got {out!r}")
        return out

    def target(self, doc: Doc) -> Any:
        out = self._field(self.doc_to_target, doc, "doc_to_target")
        if isinstance(out, str) and self.kind == "multiple_choice" and out.isdigit():
            return int(out)
        return out

    def gold(self, doc: Doc) -> int:
        """The index of the right choice of a multiple-choice doc, checked against the number of choices."""
        choices, t = self.choices(doc), self.target(doc)
        if isinstance(t, str):
            if t not in choices:
                raise TaskError(f"{doc.where}: the answer {t!r} is none of the choices {choices}")
            t = choices.index(t)
        if isinstance(t, bool) or not isinstance(t, int):
            raise TaskError(f"{doc.where}: the answer must be a choice's index or text, got {t!r}")
        if not 0 <= t < len(choices):
            raise TaskError(f"{doc.where}: answer index {t} is out of range for {len(choices)} choices "
                            f"(indices count from 0)")
        return t

    def answer_text(self, doc: Doc) -> str:
        """What a shot shows after the question: the right choice, or the target text."""
        if self.kind == "multiple_choice":
            return self.choices(doc)[self.gold(doc)]
        t = self.target(doc)
        return t[0] if isinstance(t, list) else str(t)

    def check(self) -> None:
        """Render every doc (and shot) once, so that a bad record fails before any model runs."""
        if not self.docs:
            raise TaskError(f"{self.source}: the task {self.name!r} has no documents")
        for doc in self.docs + (self.fewshot_docs or []):
            if self.kind == "loglikelihood_rolling":
                if not isinstance(self.target(doc), str):
                    raise TaskError(f"{doc.where}: doc_to_target must give the text to score")
                continue
            self.text(doc)
            self.answer_text(doc)
        pool = len(self.fewshot_docs) if self.fewshot_docs is not None else len(self.docs) - 1
        if self.num_fewshot > pool:
            raise TaskError(f"{self.source}: num_fewshot={self.num_fewshot} but only {pool} documents to draw "
                            "shots from")


def _split_files(spec: dict, source: Path) -> dict[str, Path]:
    if spec.get("dataset_path") != "json":
        raise TaskError(f"{source}: dataset_path {spec.get('dataset_path')!r}: groundup reads local JSON lines "
                        "only (dataset_path: json with dataset_kwargs.data_files); the hub is not reachable")
    files = (spec.get("dataset_kwargs") or {}).get("data_files")
    if files is None:
        raise TaskError(f"{source}: dataset_kwargs.data_files is missing: name the JSONL file(s)")
    if isinstance(files, (str, list)):
        files = {"train": files}  # what datasets.load_dataset("json", data_files=...) calls a lone file
    out = {}
    for split, f in files.items():
        if isinstance(f, list):
            if len(f) != 1:
                raise TaskError(f"{source}: data_files.{split}: one file per split")
            f = f[0]
        p = Path(f)
        if not p.is_absolute() and (source.parent / p).is_file():
            p = source.parent / p
        if not p.is_file():
            raise TaskError(f"{source}: data_files.{split}: {f} is not a file (relative paths are read from the "
                            "task's folder, then the working directory)")
        out[split] = p
    return out


def read_jsonl(path: Path) -> list[Doc]:
    """The records of a JSONL file, each with its file:line."""

    docs = []
    try:
        for rec, where in read_records(path):
            if not isinstance(rec, dict):
                raise TaskError(f"{where}: a record must be a JSON object")
            docs.append(Doc(rec, where))
    except InstructionDataError as e:  # not valid JSON, named by file and line
        raise TaskError(str(e)) from None
    return docs


def from_yaml(path: str | Path) -> Task:
    """A task from an lm-evaluation-harness YAML file (the subset described in this module)."""
    path = Path(path)
    try:
        spec = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise TaskError(f"{path}: not valid YAML ({e}); note that !function needs Python, which groundup's "
                        "reader does not run: use `groundup lm-eval` for such tasks") from None
    if not isinstance(spec, dict) or "task" not in spec:
        raise TaskError(f"{path}: a task file needs a 'task' name")
    kind = spec.get("output_type", "generate_until")
    if kind not in KINDS:
        raise TaskError(f"{path}: output_type {kind!r}: choose from {', '.join(KINDS)}")
    if "doc_to_text" not in spec and kind != "loglikelihood_rolling":
        raise TaskError(f"{path}: doc_to_text is missing")
    splits = _split_files(spec, path)
    test = spec.get("test_split") or spec.get("validation_split") or "train"
    if test not in splits:
        raise TaskError(f"{path}: test_split {test!r} is not among data_files ({', '.join(splits)})")
    shots = spec.get("fewshot_split") or spec.get("training_split")
    if shots is not None and shots not in splits:
        raise TaskError(f"{path}: fewshot_split {shots!r} is not among data_files ({', '.join(splits)})")
    gen = spec.get("generation_kwargs") or {}
    until = gen.get("until", ["\n\n"] if kind == "generate_until" else [])
    filters = []
    for f in spec.get("filter_list") or []:
        for step in f.get("filter", []):
            fn = step.get("function")
            if fn == "regex":
                filters.append((step.get("regex_pattern", r"#### (\-?[0-9\.\,]+)"), int(step.get("group_select", 0)),
                                step.get("fallback", "[invalid]")))
            elif fn not in ("take_first", "strip"):
                raise TaskError(f"{path}: filter function {fn!r}: groundup applies regex, strip and take_first")
        break  # the first filter pipeline is the one reported
    fewshot_cfg = spec.get("fewshot_config") or {}
    task = Task(
        name=str(spec["task"]), kind=kind, source=str(path),
        docs=read_jsonl(splits[test]),
        fewshot_docs=read_jsonl(splits[shots]) if shots is not None and shots != test else None,
        doc_to_text=spec.get("doc_to_text", ""), doc_to_target=spec.get("doc_to_target", "answer"),
        doc_to_choice=spec.get("doc_to_choice"), num_fewshot=int(spec.get("num_fewshot") or 0),
        fewshot_sampler=fewshot_cfg.get("sampler", "default"),
        target_delimiter=spec.get("target_delimiter", " "), fewshot_delimiter=spec.get("fewshot_delimiter", "\n\n"),
        description=spec.get("description", ""), until=[until] if isinstance(until, str) else list(until),
        max_gen_toks=int(gen.get("max_gen_toks", 256)), filters=filters, metrics=spec.get("metric_list") or [])
    if kind == "multiple_choice" and task.doc_to_choice is None:
        raise TaskError(f"{path}: a multiple_choice task needs doc_to_choice")
    if task.fewshot_sampler not in ("default", "first_n"):
        raise TaskError(f"{path}: fewshot_config.sampler {task.fewshot_sampler!r}: use default or first_n")
    return task


def from_jsonl(path: str | Path) -> Task:
    """A task from a bare JSONL file, its kind read off the first record's fields (see the module doc)."""
    path = Path(path)
    docs = read_jsonl(path)
    if not docs:
        raise TaskError(f"{path}: no records")
    first = docs[0].fields
    if "choices" in first:
        kind, extra = "multiple_choice", dict(doc_to_text="Question: {{question}}\nAnswer:", doc_to_choice="choices",
                                              doc_to_target="answer")
        need = ("question", "choices", "answer")
    elif "text" in first:
        kind, extra, need = "loglikelihood_rolling", dict(doc_to_target="text"), ("text",)
    elif "question" in first and "answer" in first:
        kind, extra = "generate_until", dict(doc_to_text="Question: {{question}}\nAnswer:", doc_to_target="answer")
        need = ("question", "answer")
    else:
        raise TaskError(f"{docs[0].where}: a record needs question/choices/answer (multiple choice), question/answer "
                        "(generation) or text (perplexity)")
    for d in docs:
        missing = [k for k in need if k not in d.fields]
        if missing:
            raise TaskError(f"{d.where}: missing field {missing[0]!r} (this file's first record makes it a "
                            f"{kind} task, whose records need {', '.join(need)})")
    return Task(name=path.stem, kind=kind, docs=docs, source=str(path), **extra)


def load_task(spec: str | Path) -> Task:
    """A task from a YAML or JSONL file, or by the name of a task groundup ships (``tiny_mc`` ...)."""
    p = Path(spec)
    if not p.exists() and (TASKS_DIR / f"{spec}.yaml").is_file():
        p = TASKS_DIR / f"{spec}.yaml"
    if not p.is_file():
        shipped = ", ".join(sorted(x.stem for x in TASKS_DIR.glob("*.yaml")))
        raise TaskError(f"{spec}: no such task file (shipped tasks: {shipped})")
    task = from_yaml(p) if p.suffix in (".yaml", ".yml") else from_jsonl(p)
    task.check()
    return task


def write_tasks(out: str | Path, names: list[str] | None = None) -> list[Path]:
    """Copy shipped tasks (all, or ``names``) into ``out`` with absolute data_files paths, for lm-eval's
    --include_path; returns the YAML files written."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for src in sorted(TASKS_DIR.glob("*.yaml")):
        if names and src.stem not in names:
            continue
        spec = yaml.safe_load(src.read_text(encoding="utf-8"))
        files = spec["dataset_kwargs"]["data_files"]
        for split, f in list(files.items()):
            shutil.copyfile(TASKS_DIR / f, out / f)
            files[split] = str((out / f).resolve())
        dst = out / src.name
        dst.write_text(yaml.safe_dump(spec, sort_keys=False, allow_unicode=True), encoding="utf-8")
        written.append(dst)
    return written
