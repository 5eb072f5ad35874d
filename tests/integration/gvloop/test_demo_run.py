"""`gvloop up --demo` as CI runs it (no terminal) on the tiny model, once for the module: while
it runs, `gvloop status` reads every component; when it ends, its output is short, each
component's output is in its own log file and not on the terminal, and the run directory holds
the curve (JSON, PNG), the trainer's metrics and TensorBoard files."""

from __future__ import annotations

import json
import re
import struct
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from tensorboardX.proto.event_pb2 import Event

from gvloop.topology import StackPorts
from tests.integration.gvloop.up_process import Up

pytestmark = pytest.mark.slow

SWAPS = 2
TIME_BUDGET_S = 150
# The plain console's lines for this run: 1 (where the logs are) + 4 (each component ready) + 1
# (pipeline up) + 1 per held-out point (3) + 1 per hot swap (2) + 1 progress line per minute of
# training (2) + the closing block: a blank line, a title, the table's 2 header lines and 3
# rows, a blank line, 2 lines of run directory, 1 of wall time = 23. The budget leaves room
# for a swap that fails and is retried (2 lines) and a component that starts slowly, not for
# a line per request, per step or per retry, nor for any component's own output.
# The same count for `make run` (15 minutes, about 20 swaps): about 85 lines, a screenful for
# a quarter of an hour.
LINE_BUDGET = 30
COMPONENTS = ("engine", "verifier", "generator", "trainer")
# a line only each component's own output has, to find in its log file and not on the terminal
COMPONENT_MARKS = {
    "engine": "Route: /v1/chat/completions",
    "verifier": "judge ready",
    "generator": "Application startup complete",
    "trainer": "trainer stopped at step",
}


@pytest.fixture(scope="module")
def demo(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Up]:
    data_dir = tmp_path_factory.mktemp("demo") / "data"
    run = Up(
        tiny_model_dir,
        data_dir,
        StackPorts.free(),
        # 10 held-out problems keep each evaluation within seconds
        args=(
            "--demo",
            "--swaps",
            str(SWAPS),
            "--time-budget",
            str(TIME_BUDGET_S),
            "--heldout-size",
            "10",
        ),
        # the tiny model answers nothing right: the demo's recipe would skip every group and
        # never train, so nothing would be swapped
        env={"GVLOOP_TRAINER_SKIP_GROUPS": "none"},
    )
    yield run
    run.stop()


def gvloop_status(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gvloop", "status"],
        env=env | {"COLUMNS": "200"},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_status_reads_every_running_component(demo: Up) -> None:
    # after the first held-out point the trainer has its metrics server up and the demo feeds
    demo.wait_for("held-out v0", timeout_s=900)
    status = gvloop_status(demo.env)
    assert status.returncode == 0, status.stdout + status.stderr
    rows = {line.split()[1]: line for line in status.stdout.splitlines() if "http://" in line}
    assert sorted(rows) == sorted(COMPONENTS), status.stdout
    for name in ("engine", "verifier", "generator"):
        assert " ok " in rows[name], rows[name]
    # figures come from each component's /metrics
    assert re.search(r"version \d", rows["generator"]), rows["generator"]
    assert "step " in rows["trainer"], rows["trainer"]
    assert "requests " in rows["verifier"], rows["verifier"]


def test_demo_output_logs_and_run_directory(demo: Up) -> None:
    assert demo.finish(timeout_s=900 + TIME_BUDGET_S) == 0, demo.output
    print(demo.output)
    assert len(demo.lines) <= LINE_BUDGET, f"{len(demo.lines)} lines:\n{demo.output}"
    assert sum("ready after" in line for line in demo.lines) == len(COMPONENTS), demo.output
    assert sum("hot swap: agent A serves" in line for line in demo.lines) >= SWAPS, demo.output
    assert "± " in demo.output  # the table shows the standard error

    (run_dir,) = [line.split(": ", 1)[1] for line in demo.lines if line.startswith("run directory")]
    run = Path(run_dir)
    for name, mark in COMPONENT_MARKS.items():
        log = (run / "logs" / f"{name}.log").read_text()
        assert mark in log, f"{name}.log lacks {mark!r}"
        assert mark not in demo.output, f"{name}'s own output reached the terminal"

    curve = json.loads((run / "curve.json").read_text())
    assert [p["version"] for p in curve] == list(range(SWAPS + 1))
    # each point sits where its version began to be served, from the checkpoint it names
    assert [p["at_s"] for p in curve] == sorted(p["at_s"] for p in curve)
    assert curve[0]["checkpoint_dir"] is None  # the base model
    assert all("/step_" in p["checkpoint_dir"] for p in curve[1:]), curve
    assert all(0 <= p["stderr"] <= 0.5 for p in curve)
    assert curve[-1]["samples_fed"] > 0
    assert (run / "curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # pass@4 beside the accuracy, from the demo's default 4 samples of each held-out problem
    # (all 10 here), kept one row each beside the greedy answers
    samples = [json.loads(s) for s in (run / "heldout-samples.jsonl").read_text().splitlines()]
    for point in curve:
        assert (point["passk_n"], point["passk_k"], point["passk_problems"]) == (4, 4, 10)
        assert 0 <= point["pass_at_k"] <= 1 and 0 <= point["pass_at_k_stderr"] <= 0.5
        assert 0.25 <= point["heldout_distinct_fraction"] <= 1
        assert sum(s["version"] == point["version"] for s in samples) == 4 * 10
    assert "| held-out pass@4 (n=4) |" in demo.output

    events = [json.loads(line) for line in (run / "trainer-metrics.jsonl").read_text().splitlines()]
    steps = [e["step"] for e in events if e["event"] == "step"]
    assert steps and steps == sorted(steps)
    # each point lists how long the swaps up to its version stopped generation
    swaps = {e["version"]: e["stopped_s"] for e in events if e.get("outcome") == "ok"}
    assert [p["swaps_stopped_s"] for p in curve[1:]] == [[swaps[p["version"]]] for p in curve[1:]]

    (events_file,) = (run / "tensorboard").glob("events.out.tfevents.*")
    tags = tensorboard_tags(events_file)
    assert {"loss/total", "loss/ce", "train/accuracy", "weights/version"} <= tags.keys()
    assert tags["loss/total"] == steps  # one point per trainer step, at that step
    assert len(tags["heldout/accuracy"]) == SWAPS + 1


def tensorboard_tags(path: Path) -> dict[str, list[int]]:
    """{tag: the steps it has a scalar at}, read from a TensorBoard event file (TFRecord:
    length, its CRC, the serialized Event, its CRC)."""
    data = path.read_bytes()
    tags: dict[str, list[int]] = {}
    offset = 0
    while offset < len(data):
        (length,) = struct.unpack_from("<Q", data, offset)
        event = Event.FromString(data[offset + 12 : offset + 12 + length])
        offset += 12 + length + 4
        for value in event.summary.value:
            tags.setdefault(value.tag, []).append(event.step)
    return tags
