"""pytest plugin: every preview of every case file becomes a test item (pytest-mpl's shape).

* one marker, ``gpu``, on every parity item: ``pytest -m gpu`` runs the parity suite;
* the options table of :mod:`harness.options` as ``--parity-<name>`` options and ``parity_<name>`` ini keys, with
  its precedence: command line > case file > ini > default (an ini value fills in only what a case leaves out);
* ``--parity-steps``/``--parity-samples`` deselect the previews they leave out (reported as deselected, like ``-k``);
* a results folder (``--parity-out``) with per-preview results, renders, ``results.json`` and ``report.html``
  written at session end;
* models, LoRAs and prompt embeddings are loaded once per process (session-scoped engine).

Items are named ``case::step::index``. Without a visible GPU they skip with a reason unless
``--parity-device cpu`` is given (tiny models, the CPU oracle).

A session that compared nothing must not pass: when parity items were collected, no other test ran, and not one
parity item was compared with its golden (every one skipped: unreproducible, or no GPU), the session exits 5
(pytest's "no tests collected": nothing was tested) with a line saying so.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from .errors import HarnessError

def pytest_addoption(parser):
    from .options import PYTEST, options_for

    group = parser.getgroup("wan-parity", "Wan 2.2 I2V parity against ai-toolkit previews")
    for option in options_for(PYTEST):
        help_text = option.help_for(PYTEST)
        kwargs = {"action": "store_true"} if option.action == "store_true" else {"metavar": option.metavar_for()}
        if option.action == "toggle":  # --parity-x / --parity-no-x, one destination
            group.addoption(f"--parity-no-{option.name}", dest=option.ini, action="store_const", const=False,
                            default=None, help=f"turn --parity-{option.name} off")
            kwargs = {"action": "store_const", "const": True}
        if option.action == "append":
            kwargs["action"] = "append"
        group.addoption(option.flag(PYTEST), dest=option.ini, default=None, help=help_text, **kwargs)
        parser.addini(option.ini, help_text, type="linelist" if option.action == "append" else None)


@pytest.hookimpl(tryfirst=True)
def pytest_load_initial_conftests(early_config, parser, args):
    """Pin the CPU ISAs before any conftest or test module imports torch (xdist workers inherit the environment)."""
    from .stack import apply_pin

    try:
        pin = _session_pin(early_config)
        early_config._parity_pinned = apply_pin(pin, "--parity-golden-stack")
    except HarnessError as exc:
        raise pytest.UsageError(exc.line()) from None


def _session_pin(config):
    """The explicit stack (option, then ini) or else the collected case files' stacks when they agree."""
    from .stack import Pin, load_stack, merge_pins, plan_pin

    path = _stack_file(config, config.known_args_namespace.parity_golden_stack)
    if path:
        return plan_pin(load_stack(path))
    try:
        return merge_pins([plan_pin(stack) for stack in _case_stacks(config)])
    except HarnessError as exc:  # goldens of several stacks: render native, each item says why it is not exact
        import warnings

        warnings.warn(f"wan-parity: no CPU pin for this session: {exc.message}")
        return Pin()


def _stack_file(config, explicit):
    """``--parity-golden-stack`` (relative to the working directory), else the ini key (relative to the rootdir)."""
    ini = config.getini("parity_golden_stack")
    return explicit or (config.rootpath / ini if ini else None)


def _case_stacks(config):
    """golden_stack of every case file the session will collect (cheap: YAML only, no torch)."""
    from .case import is_case_file, load_case

    roots = [config.known_args_namespace.parity_cases or ""] + list(config.known_args_namespace.file_or_dir or [])
    roots = [r for r in roots if r] or list(config.getini("testpaths") or [])
    for root in roots:
        path = Path(str(root).split("::")[0])
        for candidate in ([path] if path.is_file() else sorted(path.rglob("*.y*ml")) if path.is_dir() else []):
            if is_case_file(candidate):
                try:
                    stack = load_case(candidate).golden_stack
                except HarnessError:
                    continue  # collection reports the broken case
                if stack:
                    yield stack


def run_settings(config):
    """The session's options from the table (harness.options.resolve, as the CLI builds them); UsageError if bad."""
    from .options import PYTEST, options_for, resolve

    table = options_for(PYTEST)
    try:
        return resolve(PYTEST, {o.dest: config.getoption(o.ini) for o in table},
                       {o.dest: config.getini(o.ini) for o in table}, ini_file=config.inipath)
    except HarnessError as exc:
        raise pytest.UsageError(exc.line()) from None


def _setting(config, name: str):
    """One option's value for the session (command line, else ini, else the default)."""
    return config._parity.settings.values[name.replace("-", "_")]


def pytest_configure(config):
    config.addinivalue_line("markers", "gpu: a parity item or test that needs a CUDA device (`pytest -m gpu`)")
    config.addinivalue_line("markers", "xdist_group(name): keep items of one base model/LoRA on one xdist worker")
    settings = run_settings(config)
    cases = settings.values["cases"]
    if cases and _no_explicit_paths(config):
        config.args[:] = [str(cases)]  # only that file or folder, not the testpaths beside it
    elif cases:
        config.args.append(str(cases))
    elif _no_explicit_paths(config) and (config.rootpath / "cases").is_dir():
        config.args.append(str(config.rootpath / "cases"))
    config._parity = ParitySession(config, settings)
    config._parity_counter = ComparedCounter()
    config.pluginmanager.register(config._parity_counter, "wan-parity-counter")


def _no_explicit_paths(config) -> bool:
    """Collect the default cases/ only when the user named no paths (like testpaths)."""
    source = getattr(config, "args_source", None)
    return source is not None and source.name == "TESTPATHS"


def pytest_collect_file(file_path: Path, parent):
    from .case import is_case_file

    if file_path.suffix.lower() in (".yaml", ".yml") and is_case_file(file_path):
        return CaseFile.from_parent(parent, path=file_path)
    return None


def pytest_collection_modifyitems(session, config, items):
    """``--parity-steps``/``--parity-samples``/``--parity-shard``: previews left out are deselected (harness.targets)."""
    from .targets import select, unique

    try:
        unique([item.target for item in items if isinstance(item, PreviewItem)])
    except HarnessError as exc:  # two case files of one name would overwrite each other's results
        raise pytest.UsageError(exc.line()) from None
    settings = config._parity.settings
    if settings.steps is None and settings.samples is None and settings.shard is None:
        return
    previews = [item for item in items if isinstance(item, PreviewItem)]
    kept = {id(t) for t in select([item.target for item in previews], settings.steps, settings.samples,
                                  settings.shard)}
    dropped = [item for item in previews if id(item.target) not in kept]
    if dropped:
        gone = {id(item) for item in dropped}
        config.hook.pytest_deselected(items=dropped)
        items[:] = [item for item in items if id(item) not in gone]


class ParitySession:
    """Session-wide state: the render engine (models cached) and the results gathered for the report."""

    def __init__(self, config, settings):
        self.config = config
        self.settings = settings  # harness.options.Resolved
        self.results: list[dict] = []
        self.merged: dict | None = None
        self._engine = None
        self.environment: dict = {}

    @property
    def out(self) -> Path:
        return Path(self.settings.options.out)

    def path_map(self):
        """The command line's map; the ini's sits under each case's own (settings.case_defaults)."""
        return self.settings.options.path_map

    def golden_stack(self):
        """The session's stack file (option, else ini) for cases that state none; None when not given."""
        from .stack import load_stack

        path = _stack_file(self.config, self.config.getoption("parity_golden_stack"))
        return load_stack(path) if path else None

    def engine(self):
        if self._engine is None:
            from dataclasses import replace

            from .engine import Engine

            self._engine = Engine(replace(self.settings.options, device=self.device()))
            self.environment = self._engine.environment()
        return self._engine

    def device(self) -> str:
        """Under pytest-xdist, worker gwN takes the N-th visible GPU (within the caller's CUDA_VISIBLE_DEVICES)."""
        device = self.settings.options.device
        worker = getattr(self.config, "workerinput", {}).get("workerid")
        if worker is None or device not in ("auto", "cuda"):
            return device
        import torch

        if not torch.cuda.is_available():
            return device
        index = int(worker.lstrip("gw"))
        if index >= torch.cuda.device_count():
            raise pytest.UsageError(f"xdist worker {worker} has no GPU of its own: {torch.cuda.device_count()} visible; "
                                    f"use -n {torch.cuda.device_count()} or fewer")
        return f"cuda:{index}"

    def skip_reason(self, target) -> str | None:
        """Items that must render on CUDA skip (with the reason) where none is visible; CPU items always run."""
        device = self.device()
        if device == "auto" and target.device != "auto":
            device = target.device  # the case's, or the ini's where the case says none
        golden_on_cuda = target.device == "cuda" or (target.golden_stack or {}).get("device") == "cuda"
        if device == "cpu" and golden_on_cuda:
            return ("the golden was rendered on CUDA: a CPU render cannot reproduce it (--parity-device cpu); run on "
                    "a GPU machine without --parity-device cpu")
        if device == "cpu":
            return None
        import torch

        if not torch.cuda.is_available():
            return "no CUDA device visible; run on a GPU machine or pass --parity-device cpu (tiny models, CPU oracle)"
        return None


class CaseFile(pytest.File):
    def collect(self):
        from .targets import from_case, with_golden_stack

        session = self.config._parity
        try:
            targets = from_case(self.path, session.path_map(), session.settings.case_defaults,
                                session.settings.options.lora_overrides)
            targets = with_golden_stack(targets, session.golden_stack())
        except HarnessError as exc:
            yield BrokenCase.from_parent(self, name="case", error=exc)
            return
        for target in targets:
            name = f"{target.preview.case}::{target.preview.step}::{target.preview.index}"
            if target.preview.label_note:
                name += f"::{target.preview.extra.get('time')}"
            yield PreviewItem.from_parent(self, name=name, target=target)


class PreviewError(Exception):
    """A failed parity item; its message is the one line a nightly log needs."""


class PreviewItem(pytest.Item):
    def __init__(self, *, target, **kwargs):
        super().__init__(**kwargs)
        self.target = target
        self.add_marker(pytest.mark.gpu)
        # Items of one base model and LoRA stay on one xdist worker (--dist loadgroup) so it keeps them loaded.
        group = f"{target.model_name}|{target.preview.lora}"
        self.add_marker(pytest.mark.xdist_group(name=group))

    def runtest(self):
        from .fsutil import write_json_atomic
        from .layout import result_file
        from .runner import run_one

        session = self.config._parity
        reason = session.skip_reason(self.target)
        self.user_properties.append((PARITY_PROPERTY, "skipped"))
        if reason:
            pytest.skip(reason)
        if self.target.preview.unreproducible and not self.target.preview.broken:
            pytest.skip(f"unreproducible: {self.target.preview.unreproducible}")
        try:
            result = run_one(session.engine(), self.target)
            self.user_properties[-1] = (PARITY_PROPERTY, result.status)
            session.results.append(result)
            write_json_atomic(result_file(session.out, self.target), result.to_json())
        except HarnessError as exc:
            raise PreviewError(f"error: {exc.line()}") from None
        if result.status in ("fail", "error"):
            raise PreviewError(_failure_line(result, session.out))

    def repr_failure(self, excinfo):
        if isinstance(excinfo.value, PreviewError) and not self.config.getoption("verbose") > 0:
            return str(excinfo.value)
        return super().repr_failure(excinfo)

    def reportinfo(self):
        return self.path, None, self.name


class BrokenCase(pytest.Item):
    """A case file that cannot be read fails as one item with the one-line error."""

    def __init__(self, *, error, **kwargs):
        super().__init__(**kwargs)
        self.error = error
        self.add_marker(pytest.mark.gpu)

    def runtest(self):
        raise PreviewError(f"error: {self.error.line()}")

    def repr_failure(self, excinfo):
        if self.config.getoption("verbose") > 0:
            return super().repr_failure(excinfo)
        return str(excinfo.value)

    def reportinfo(self):
        return self.path, None, "case"


def _failure_line(result, out: Path) -> str:
    """One line for a failed item: the numbers and the rule that failed them, the profile, where the report is."""
    from .numbers import fmt_db

    if result.status == "error":
        return f"error: {result.message}"
    raw_min = result.raw.psnr_min if result.raw is not None else None
    return (f"{result.key}: drift: {result.message}; raw PSNR min {fmt_db(raw_min)} dB; profile {result.profile}; "
            f"report: {out / 'report.html'}; next: {result.diagnose_command()}")


PARITY_PROPERTY = "wan-parity"  # a user property on every parity item's report (it travels through xdist)


def pytest_sessionstart(session):
    import time

    session.config._parity_started = time.time()


class ComparedCounter:
    """Parity items compared, parity items not compared, other tests run: fed by every test report (on the xdist
    controller too: the status travels as a user property)."""

    def __init__(self):
        self.compared = self.skipped = self.other = 0

    def pytest_runtest_logreport(self, report):
        if report.when != "call":
            return
        status = dict(report.user_properties).get(PARITY_PROPERTY)
        if status is None:
            self.other += 1
        elif status in ("pass", "fail"):
            self.compared += 1
        else:
            self.skipped += 1

    @property
    def nothing(self) -> bool:
        return self.skipped > 0 and self.compared == 0 and self.other == 0


def _compared_nothing(config) -> bool:
    counter = getattr(config, "_parity_counter", None)
    return counter is not None and counter.nothing and not hasattr(config, "workerinput")


def pytest_sessionfinish(session, exitstatus):
    """Workers write ``results.<worker>.json``; the controller (or a plain run) merges and writes the report."""
    parity = getattr(session.config, "_parity", None)
    if parity is None:
        return
    if _compared_nothing(session.config) and session.exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.NO_TESTS_COLLECTED
    from .fsutil import write_json_atomic
    from .result import results_document

    worker = getattr(session.config, "workerinput", {}).get("workerid")
    if worker is not None:
        if parity.results:
            write_json_atomic(parity.out / f"results.{worker}.json", results_document(parity.environment, parity.results))
        return
    documents = _worker_documents(parity.out, session.config._parity_started)
    if parity.results:
        documents.append(results_document(parity.environment, parity.results))
    if not documents:
        return
    from .report import merge_documents, write_report

    document = documents[0] if len(documents) == 1 else merge_documents(documents)
    write_json_atomic(parity.out / "results.json", document)
    json_path = _setting(session.config, "json")
    if json_path:
        write_json_atomic(Path(json_path), document)
    write_report(document, parity.out)
    parity.merged = document


def _worker_documents(out: Path, started: float) -> list[dict]:
    """This session's xdist shards (older files from earlier sessions are ignored)."""
    import json

    shards = []
    for path in sorted(out.glob("results.gw*.json")):
        if path.stat().st_mtime >= started:
            shards.append(json.loads(path.read_text()))
    return shards


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if _compared_nothing(config):
        terminalreporter.write_line(f"wan-parity: nothing was compared: all {config._parity_counter.skipped} parity "
                                    "items skipped (reasons above with -rs); exit 5, a session that checked nothing "
                                    "is not a pass")
    parity = getattr(config, "_parity", None)
    document = getattr(parity, "merged", None)
    if document is None:
        return
    from .result import results_of

    results = results_of(document)
    bit_exact = sum(1 for r in results if r.bit_exact)
    from .stack import pinned_env

    pinned = pinned_env()
    pin = ", ".join(f"{k}={v}" for k, v in pinned.items()) if pinned else "nothing pinned"
    terminalreporter.write_line(f"wan-parity: {len(results)} previews rendered, {bit_exact} bit-exact ({pin}); "
                                f"results and report in {parity.out}")
