"""The `kiln` command. Heavy imports (torch, onnxruntime) happen inside commands, so
`kiln --help` and the operator's commands stay fast and torch-free."""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer

from kiln.api.errors import ExitCode, InvalidSpecError, KilnError, KilnInputError
from kiln.api.layout import STATUS_FILE
from kiln.api.request import Stage
from kiln.api.verdict import verdict
from kiln.cli.capture import library_output_to
from kiln.cli.leftovers import owned_prefix, sweep
from kiln.cli.outdir import LOG_FILE, OutputFolder

WORK_PREFIX = "kiln-"  # the work folder in the system's temporary folder: kiln-PID-xxxx

if TYPE_CHECKING:
    from kiln.api.spec import OptimizedModel
    from kiln.api.status import OptimizedModelStatus
    from kiln.builder.context import BuildContext
    from kiln.builder.pipeline import Outcome
    from kiln.builder.progress import Reporter

app = typer.Typer(
    name="kiln",
    help="Turn a PyTorch model into the fastest verified inference engine per GPU type.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


class ReportFormat(StrEnum):
    markdown = "markdown"
    html = "html"
    both = "both"


@app.callback()
def _root() -> None:
    """Kiln: builder, benchmark and (in a cluster) operator for OptimizedModel resources."""


@app.command()
def optimize(
    spec: Annotated[Path, typer.Argument(help="OptimizedModel YAML, as you would kubectl apply")],
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="folder for status.json and the report [out/NAME]"),
    ] = None,
    artifacts: Annotated[
        str | None,
        typer.Option(
            help="artifact store URI (path, file://, s3://); overrides spec.artifacts.uri "
            "[spec.artifacts.uri, else .kiln/artifacts]"
        ),
    ] = None,
    cache_dir: Annotated[
        Path | None,
        typer.Option(help="local folder for downloads [$XDG_CACHE_HOME/kiln or ~/.cache/kiln]"),
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="rebuild and re-measure even when cached")
    ] = False,
    report: Annotated[
        ReportFormat, typer.Option(help="report format written next to status.json")
    ] = ReportFormat.both,
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="print only the summary line (or the error)")
    ] = False,
    verbose: Annotated[
        bool,
        typer.Option("--verbose", "-v", help="let libraries' warnings through, no log file"),
    ] = False,
) -> None:
    """Export, quantize, build, verify, benchmark and select, on this machine.

    Prints a table of every candidate and the verdict, and writes OUTPUT/status.json (the
    status block the operator writes to the resource), report.md / report.html, model.json and
    kiln.log (what the libraries printed). The folder is replaced as a whole at the end: a
    failed run leaves one that says Failed. A second run of an unchanged spec reuses every
    stored artifact and result. Exit codes: 0 done (Ready or NoImprovement), 1 a stage failed,
    2 bad input (the message names the field or file), 3 storage could not be reached (try
    again).
    """
    from kiln.api.load import load_file

    try:
        model = load_file(spec)
        folder = OutputFolder(output or Path("out") / model.metadata.name)
    except KilnError as exc:
        _never_started(spec, output, exc)
        _fail(exc)
    try:
        outcome = _optimize_into(folder, model, spec, artifacts, cache_dir, force, quiet, verbose)
    except KilnError as exc:
        _commit_failed(folder, model.metadata.name, exc, report)
        _fail(exc, None if quiet or verbose else folder.final / LOG_FILE)
    except BaseException as exc:  # a crash or Ctrl-C: the folder must not look current
        _commit_failed(folder, model.metadata.name, exc, report)
        raise
    status = outcome.status
    lines = verdict(status, model.spec.selection)
    folder.write(model.metadata.name, status, model, *_formats(report), verdict=lines)
    folder.commit()
    _finish(folder, status, lines, [s.line() for s in outcome.stages], quiet, verbose)


def _optimize_into(
    folder: OutputFolder,
    model: OptimizedModel,
    spec: Path,
    artifacts: str | None,
    cache_dir: Path | None,
    force: bool,
    quiet: bool,
    verbose: bool,
) -> Outcome:
    """The run, with the libraries' output in the folder's log unless --verbose."""
    from kiln.builder.progress import RichReporter, SilentReporter

    with library_output_to(None if verbose else folder.log) as terminal:
        reporter: Reporter = SilentReporter() if quiet else RichReporter(terminal)
        return _run(model, spec, artifacts, cache_dir, force, reporter)


def _finish(
    folder: OutputFolder,
    status: OptimizedModelStatus,
    lines: list[str],
    stage_lines: list[str],
    quiet: bool,
    verbose: bool,
) -> None:
    failed = status.phase.value == "Failed"
    if quiet:
        if failed:
            typer.echo(f"error: {status.message or status.summary}", err=True)
            raise typer.Exit(ExitCode.FAILED)
        typer.echo(status.summary)
        return
    _print_table(status, stage_lines, lines)
    if failed:
        typer.echo(f"error: {status.message or status.summary}", err=True)
    log = "" if verbose else f", log: {folder.final / LOG_FILE}"
    typer.echo(f"status: {folder.final / STATUS_FILE}{log}", err=True)
    if failed:
        raise typer.Exit(ExitCode.FAILED)


def _formats(fmt: ReportFormat) -> tuple[bool, bool]:
    return fmt is not ReportFormat.html, fmt is not ReportFormat.markdown


def _commit_failed(folder: OutputFolder, name: str, exc: BaseException, fmt: ReportFormat) -> None:
    """Replace the output folder with one that says Failed everywhere (the log kept)."""
    from kiln.api.status import OptimizedModelStatus, Phase

    if isinstance(exc, KilnError):
        message = " ".join(str(exc).split())
    elif isinstance(exc, KeyboardInterrupt):
        message = "interrupted"
    else:
        message = f"crashed: {type(exc).__name__}: {' '.join(str(exc).split())[:300]}"
    status = OptimizedModelStatus(phase=Phase.FAILED, message=message)
    folder.write(name, status, None, *_formats(fmt))
    folder.commit()


def _never_started(spec: Path, output: Path | None, exc: KilnError) -> None:
    """A spec that cannot be used: an earlier run's folder must not look current. The folder
    is --output, or out/NAME where the spec's metadata.name can still be read."""
    target = output
    if target is None:
        name = _name_hint(spec)
        target = Path("out") / name if name else None
    if target is None or (output is None and not target.exists()):
        return
    try:
        folder = OutputFolder(target)
    except KilnError:
        return  # not ours to replace
    _commit_failed(folder, target.name, exc, ReportFormat.both)


def _name_hint(spec: Path) -> str | None:
    """metadata.name from a spec that failed validation, if it has a plain one."""
    import re

    import yaml

    from kiln.api.load import read_spec_text

    try:  # read_spec_text: the same size and encoding guards as a spec that loads
        document = yaml.safe_load(read_spec_text(spec))
        name = document["metadata"]["name"]
    except Exception:  # anything unreadable has no name to offer
        return None
    return name if isinstance(name, str) and re.fullmatch(r"[a-z0-9][-a-z0-9]*", name) else None


@app.command()
def crds(
    output: Annotated[Path, typer.Option("--output", "-o", help="folder to write into")] = Path(
        "crds"
    ),
) -> None:
    """Write the CustomResourceDefinitions generated from the typed API (kiln.api)."""
    from kiln.api.crd import render_crds

    output.mkdir(parents=True, exist_ok=True)
    for name, text in render_crds().items():
        (output / name).write_text(text)
        typer.echo(f"wrote {output / name}")


@app.command("operator")
def run_operator(
    kubeconfig: Annotated[
        Path | None,
        typer.Option(help="kubeconfig file (default: in-cluster config, then $KUBECONFIG)"),
    ] = None,
    namespace: Annotated[
        list[str] | None,
        typer.Option(
            "--namespace",
            "-n",
            envvar="KILN_NAMESPACES",
            # Click splits a list's variable on whitespace only, so "a,b" would be one name
            # that no namespace can have, watched in silence; commas separate names too.
            callback=lambda value: (
                [n for v in value or () for n in v.replace(",", " ").split()] or None
            ),
            help="watch these namespaces only (repeat the option; KILN_NAMESPACES: names"
            " separated by spaces or commas); cluster-wide otherwise",
        ),
    ] = None,
    builder_image: Annotated[
        str | None,
        typer.Option(
            envvar="KILN_BUILDER_IMAGE",
            help="image of builder Jobs (default: kiln-builder:VERSION)",
        ),
    ] = None,
    server_image: Annotated[
        str | None,
        typer.Option(
            envvar="KILN_SERVER_IMAGE",
            help="image of inference servers (default: kiln-builder:VERSION)",
        ),
    ] = None,
    artifacts_uri: Annotated[
        str | None,
        typer.Option(
            envvar="KILN_ARTIFACTS_URI", help="artifact store for specs without spec.artifacts.uri"
        ),
    ] = None,
    credentials_secret: Annotated[
        str | None,
        typer.Option(
            envvar="KILN_CREDENTIALS_SECRET", help="Secret with S3 credentials for Jobs and servers"
        ),
    ] = None,
    gpu_label: Annotated[
        str | None,
        typer.Option(
            envvar="KILN_GPU_LABEL",
            help="node label naming the GPU type (default: the NVIDIA GPU operator's)",
        ),
    ] = None,
    liveness: Annotated[
        str, typer.Option(help="liveness endpoint URL")
    ] = "http://0.0.0.0:8081/healthz",
    resync_seconds: Annotated[
        float | None,
        typer.Option(
            envvar="KILN_RESYNC_SECONDS",
            help="re-check settled resources this often (watch events wake them at once)",
        ),
    ] = None,
    workers: Annotated[
        int | None, typer.Option(envvar="KILN_WORKERS", help="reconcile passes running at once")
    ] = None,
    source_check_seconds: Annotated[
        float | None,
        typer.Option(
            envvar="KILN_SOURCE_CHECK_SECONDS",
            help="trust a source's identity read from storage this long, for every resource "
            "with that source (default 60; 0: read it on every pass)",
        ),
    ] = None,
    log_json: Annotated[bool, typer.Option("--log-json", help="structured JSON logs")] = False,
    leader_election: Annotated[
        bool,
        typer.Option(
            "--leader-election/--no-leader-election",
            envvar="KILN_LEADER_ELECTION",
            help="run Kopf only while holding a Lease, so replicas of the operator take turns"
            " (the manifests turn it on); off for a single local run",
        ),
    ] = False,
    lease_namespace: Annotated[
        str, typer.Option(envvar="POD_NAMESPACE", help="namespace of the leader-election Lease")
    ] = "kiln-system",
    lease_name: Annotated[
        str,
        typer.Option(
            envvar="KILN_LEASE_NAME",
            help="name of the leader-election Lease (one per install; the Role names it too)",
        ),
    ] = "kiln-operator",
    identity: Annotated[
        str | None,
        typer.Option(
            envvar="POD_NAME",
            help="this replica's name in the Lease; the same name takes its own Lease back at"
            " once (default: HOSTNAME-PID)",
        ),
    ] = None,
    lease_seconds: Annotated[
        int,
        typer.Option(
            envvar="KILN_LEASE_SECONDS",
            min=3,
            help="a standby takes over this long after the leader's last renewal; the leader"
            " renews every 2/15 of it and exits when it could not for 2/3 of it",
        ),
    ] = 15,
) -> None:
    """Run the operator (Kopf): OptimizedModel -> builder Jobs per GPU type -> Deployments ->
    measured status. Cluster-wide unless --namespace is given."""
    from kiln.operator.config import OperatorConfig
    from kiln.operator.leader import LeaderElection, default_identity
    from kiln.operator.startup import build_context, run

    # Only what was given: the defaults are OperatorConfig's, written there alone.
    given = {
        "builder_image": builder_image,
        "server_image": server_image,
        "gpu_label": gpu_label,
        "artifacts_uri": artifacts_uri,
        "credentials_secret": credentials_secret,
        "resync_seconds": resync_seconds,
        "workers": workers,
        "source_check_seconds": source_check_seconds,
    }
    config = OperatorConfig.model_validate({k: v for k, v in given.items() if v is not None})
    # One knob for the three timings: client-go's proportions (15/10/2 s) keep the renew
    # deadline safely under the lease whatever the lease is.
    leader = LeaderElection.scaled(
        lease_namespace, lease_name, identity or default_identity(), lease_seconds
    )
    try:
        context = build_context(config, kubeconfig)
    except KilnError as exc:
        _fail(exc)
    run(context, namespace or (), liveness, log_json, leader if leader_election else None)


@app.command()
def serve(
    from_dir: Annotated[
        Path | None, typer.Option("--from", help="a `kiln optimize --output DIR` folder")
    ] = None,
    result: Annotated[
        str | None, typer.Option(help="URI of a target's result.json in object storage")
    ] = None,
    cache_key: Annotated[
        str | None, typer.Option(help="the result key the server must find (with --result)")
    ] = None,
    target: Annotated[
        str | None, typer.Option(help="target to serve [this machine's GPU type, else cpu]")
    ] = None,
    name: Annotated[
        str | None, typer.Option(help="model name in the protocol [metadata.name]")
    ] = None,
    host: Annotated[str, typer.Option(help="address to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="port to listen on (REST)")] = 8080,
    grpc_port: Annotated[
        int, typer.Option(help="port for the gRPC service (KServe v2 / Triton); 0: none")
    ] = 8081,
    batch_window_ms: Annotated[
        float,
        typer.Option(
            help="how long a batch waits for more requests once the engine is free; 0: none, "
            "the requests that queued while the engine ran are the batch"
        ),
    ] = 0.0,
    threads: Annotated[
        int | None,
        typer.Option(help="CPU threads for the engine (default: the CPU quota, else affinity)"),
    ] = None,
    max_body_mb: Annotated[float, typer.Option(help="largest request body accepted")] = 64.0,
    cache_dir: Annotated[Path | None, typer.Option(help="local folder for downloads")] = None,
    drain_seconds: Annotated[
        float,
        typer.Option(
            help="on SIGTERM, answer not-ready but keep serving this long before stopping "
            "(for Services to drop the pod); a second signal stops at once"
        ),
    ] = 5.0,
) -> None:
    """Serve the selected, verified engine over the Open Inference Protocol (KServe v2 REST).

    Refuses to start (exit 2) on a target without a selected candidate, a candidate whose
    recorded accuracy gate did not pass, an artifact that fails its digest check, or a GPU
    type other than this machine's. Listens only after a warm-up inference."""
    from concurrent.futures import ThreadPoolExecutor

    import numpy as np
    import uvicorn

    from kiln.runtime.base import infer
    from kiln.runtime.devices import local_gpu
    from kiln.runtime.dtypes import NUMPY_DTYPES
    from kiln.serve.app import ModelInfo, create_app
    from kiln.serve.body import raw_body_protocol
    from kiln.serve.drain import Draining, DrainingServer
    from kiln.serve.loading import (
        check_servable,
        fetch_artifact,
        from_output_dir,
        from_result,
        open_runner,
        pick_target,
    )
    from kiln.serve.protocol import output_metadata, warm_up_points
    from kiln.storage.objects import Storage

    storage = Storage()
    cache = cache_dir or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "kiln"
    try:
        if (from_dir is None) == (result is None):
            raise KilnInputError("--from/--result", "give exactly one of them")
        model, targets = (
            from_output_dir(from_dir) if from_dir else from_result(storage, result or "", cache_key)
        )
        gpu = local_gpu()
        served = check_servable(model, pick_target(targets, target, gpu), gpu)
        artifact = fetch_artifact(storage, served.candidate.artifact or "", cache / "objects")
        # The runner is loaded, warmed up and run on one thread for its whole life.
        engine_thread = ThreadPoolExecutor(1, thread_name_prefix="kiln-infer")
        runner = engine_thread.submit(
            open_runner, served, artifact, threads, cache / "compiled"
        ).result()
    except KilnError as exc:
        _fail(exc)
    spec = model.spec

    def warm_up(batch: int, lengths: dict[str, int]) -> list[Any]:
        # Zeros, or an integer input's lowest valid value: a sample rate of 0 is not one.
        feeds = {
            t.name: np.full(
                t.concrete_shape(batch, lengths),
                t.value_range[0] if t.value_range else 0,
                dtype=NUMPY_DTYPES[t.dtype],
            )
            for t in spec.inputs
        }
        return engine_thread.submit(infer, runner, feeds).result()

    # Two warm-ups tell which output dimensions follow the batch or a length (the metadata's -1).
    at_one, *rest = [warm_up(batch, lengths) for batch, lengths in warm_up_points(spec)]
    at_two = rest[0] if rest else None
    info = ModelInfo(
        name=name or model.metadata.name,
        version=served.target.cache_key or "local",
        platform=served.candidate.name,
        inputs=spec.inputs,
        outputs=spec.outputs,
        max_batch=max(spec.batch_sizes),
        output_meta=output_metadata(spec.outputs, at_one, at_two),
        merges=spec.merges_requests,
        constants={c.name: c.number for c in spec.constants},
    )
    draining = Draining()
    max_body = int(max_body_mb * (1 << 20))
    app_ = create_app(
        info,
        lambda feeds: infer(runner, feeds),
        batch_window_ms,
        max_body,
        f"{host}:{grpc_port}" if grpc_port else None,
        engine_thread,
        draining,
    )
    typer.echo(
        f"serving {served.candidate.name} of target {served.target.name} as {info.name!r} "
        f"on http://{host}:{port}/v2/models/{info.name}"
        + (f" and grpc://{host}:{grpc_port}" if grpc_port else ""),
        err=True,
    )
    config = uvicorn.Config(
        app_, host=host, port=port, log_level="warning", http=raw_body_protocol(max_body)
    )
    DrainingServer(config, draining, drain_seconds).run()


@app.command()
def build(
    request: Annotated[Path, typer.Option(help="build request JSON written by the operator")],
    stage: Annotated[Stage, typer.Option(help="export (once per model) or target")],
    target: Annotated[
        str | None, typer.Option(help="target to build: 'cpu' or a GPU type (stage target)")
    ] = None,
    termination_log: Annotated[
        Path | None,
        typer.Option(help="where to write the JSON summary [/dev/termination-log if present]"),
    ] = None,
    cache_dir: Annotated[Path | None, typer.Option(help="local folder for downloads")] = None,
) -> None:
    """Run one builder Job stage (what the operator's Jobs run). Writes artifacts and results
    to object storage and a one-line JSON report to the termination log.

    Exit codes: 0 the export or the target's result is recorded (its state, OK, SKIPPED or
    FAILED, is in the report and in storage); 2 bad input (the Job fails at once: a retry
    cannot help); 3 storage unreachable (the Job retries with backoff); anything else is a
    crash, which the Job retries up to its backoffLimit."""
    from kiln.api.report import JobReport
    from kiln.api.request import load_request
    from kiln.builder.job import run_export, run_target
    from kiln.builder.progress import RichReporter

    log = termination_log or Path("/dev/termination-log")
    try:
        req = load_request(request)
        if stage is Stage.TARGET and not target:
            raise KilnInputError("--target", "required with --stage target")
        with _context(
            req.model, Path.cwd(), req.artifacts_uri, cache_dir, False, RichReporter()
        ) as ctx:
            report = (
                run_export(ctx, req)
                if stage is Stage.EXPORT
                else run_target(ctx, req, target or "")
            )
    except KilnError as exc:
        _write_termination(log, JobReport.failed(stage, exc, target).to_text())
        _fail(exc)
    text = report.to_text()
    _write_termination(log, text)
    typer.echo(text)


def _write_termination(path: Path, text: str) -> None:
    # Outside a pod there is no termination log; the summary is printed on stdout anyway.
    if path.parent.is_dir() and (path.exists() or path.parent != Path("/dev")):
        path.write_text(text)


@contextmanager
def _context(
    model: OptimizedModel,
    base_dir: Path,
    artifacts: str | None,
    cache_dir: Path | None,
    force: bool,
    reporter: Reporter,
) -> Iterator[BuildContext]:
    """A build context with a throw-away work folder. Relative URIs resolve against
    `base_dir` (the spec file's folder)."""
    # Imported here: torch/onnx load only for commands that need them.
    from kiln.builder.context import BuildContext
    from kiln.storage.artifacts import ArtifactStore
    from kiln.storage.objects import Storage, parse_uri

    root_uri = artifacts or model.spec.artifacts.uri
    root = parse_uri(root_uri, base_dir) if root_uri else parse_uri(".kiln/artifacts")
    cache = cache_dir or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "kiln"
    storage = Storage()
    # A run the kernel killed left its work folder; this one removes it (kiln.cli.leftovers).
    sweep(Path(tempfile.gettempdir()), WORK_PREFIX)
    with tempfile.TemporaryDirectory(prefix=owned_prefix(WORK_PREFIX)) as work:
        yield BuildContext(
            model=model,
            base_dir=base_dir,
            storage=storage,
            artifacts=ArtifactStore(storage, root, cache / "objects"),
            work_dir=Path(work),
            cache_dir=cache,
            reporter=reporter,
            force=force,
        )


def _run(
    model: OptimizedModel,
    spec_path: Path,
    artifacts: str | None,
    cache_dir: Path | None,
    force: bool,
    reporter: Reporter,
) -> Outcome:
    from kiln.builder.pipeline import optimize as run_pipeline

    base_dir = spec_path.resolve().parent
    with _context(model, base_dir, artifacts, cache_dir, force, reporter) as ctx:
        return run_pipeline(ctx)


def error_lines(exc: KilnError) -> list[str]:
    """One `error:` line per problem, each naming its file and field."""
    if isinstance(exc, InvalidSpecError):
        return [f"error: {exc.where}: {problem}" for problem in exc.problems]
    return [f"error: {' '.join(str(exc).split())}"]


def _fail(exc: KilnError, log: Path | None = None) -> NoReturn:
    """The error's lines (then where the log is), and the exit code of its kind."""
    for line in error_lines(exc):
        typer.echo(line, err=True)
    if log is not None:
        typer.echo(f"log: {log}", err=True)
    raise typer.Exit(exc.exit_code)


def _print_table(
    status: OptimizedModelStatus, stage_lines: list[str], verdict_lines: list[str]
) -> None:
    from rich.console import Console
    from rich.table import Table

    from kiln.builder.report import CAPACITY_COLUMNS, COLUMNS, capacity_rows, reasons, rows

    console = Console(stderr=True)
    if not console.is_terminal:
        console.width = 170  # a Job log or a pipe: keep the table's columns readable
    for line in stage_lines:
        console.print(line, highlight=False)
    table = Table(title=f"Kiln: {status.phase.value}")
    for column in COLUMNS:
        table.add_column(column)
    for row in rows(status):
        table.add_row(*row)
    console.print(table)
    for note in reasons(status):
        console.print(f"  {note}", highlight=False)
    for target in status.targets:
        if target.selection_reason:
            why = f"  {target.name}: {target.selected or 'none'}: {target.selection_reason}"
            console.print(why, highlight=False)
        gate = target.accuracy_gate
        if gate is not None and gate.warning:
            console.print(f"  {target.name}: warning: {gate.warning}", highlight=False)
    plans = capacity_rows(status)
    if plans:
        money = Table(title="Capacity and cost")
        for column in CAPACITY_COLUMNS:
            money.add_column(column)
        for row in plans:
            money.add_row(*row)
        console.print(money)
    if status.summary:
        console.print(f"[bold]{status.summary}[/bold]")
    for line in verdict_lines:
        console.print(line, highlight=False)


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":  # `python -m kiln.cli.main`, where no `kiln` script is installed
    main()
