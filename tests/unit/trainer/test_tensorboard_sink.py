"""The trainer's JSON lines as TensorBoard scalars, read back from the event file."""

from __future__ import annotations

import struct
from dataclasses import asdict
from pathlib import Path

from tensorboardX.proto.event_pb2 import Event

from trainer.metrics import STEP_TAGS, StepStats, TensorBoardSink


def scalars(log_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """{tag: [(step, value)]} from the one event file in `log_dir` (TFRecord framing: length,
    its CRC, the Event, its CRC)."""
    (path,) = log_dir.glob("events.out.tfevents.*")
    data, offset = path.read_bytes(), 0
    found: dict[str, list[tuple[int, float]]] = {}
    while offset < len(data):
        (length,) = struct.unpack_from("<Q", data, offset)
        event = Event.FromString(data[offset + 12 : offset + 12 + length])
        offset += 12 + length + 4
        for value in event.summary.value:
            found.setdefault(value.tag, []).append((event.step, value.simple_value))
    return found


def step(n: int, loss: float) -> dict[str, object]:
    stats = StepStats(
        step=n,
        seconds=2.0,
        loss=loss,
        ce=1.0,
        reward=-0.5,
        penalty=0.25,
        feedback=0.5,
        accuracy=0.25,
        samples=64,
        skipped=0,
        tokens=3072,
        tokens_per_s=800.0,
        lr=2e-5,
        grad_norm=1.5,
        lag=3,
        staleness=1,
        version=n - 1,
        mismatch_kl=1e-3 * n,
        ratio_outside=0.01,
        masked=0,
        mismatch_kl_by_behind={"0": 1e-4, "1": 2e-3},
        explore=-0.125,
        bonus=0.5,
    )
    return {"event": "step", "time": 1000.0 + n, **asdict(stats)}


def test_steps_swaps_and_outside_scalars_land_at_their_step(tmp_path: Path) -> None:
    sink = TensorBoardSink(tmp_path)
    sink.record({"event": "start", "step": 0, "version": 0})  # nothing to plot
    sink.record(step(1, 2.5))
    sink.record({"event": "swap", "version": 1, "outcome": "ok", "seconds": 0.5, "detail": ""})
    sink.record({"event": "swap", "version": 2, "outcome": "failed", "seconds": 9.0})
    sink.record(step(2, 2.0))
    sink.scalars(sink.step, {"heldout/accuracy": 0.3})
    sink.close()
    found = scalars(tmp_path)
    assert set(STEP_TAGS.values()) <= found.keys()
    assert found["loss/total"] == [(1, 2.5), (2, 2.0)]
    assert found["weights/version"] == [(1, 0.0), (2, 1.0)]
    assert found["weights/swap_seconds"] == [(1, 0.5)]  # the failed swap is no swap time
    assert found["heldout/accuracy"] == [(2, 0.30000001192092896)]  # float32 on disk
    assert [k for k, _ in found["offpolicy/mismatch_kl_behind_1"]] == [1, 2]


def test_a_step_that_measured_nothing_plots_no_mismatch(tmp_path: Path) -> None:
    sink = TensorBoardSink(tmp_path)
    sink.record({**step(1, 2.5), "mismatch_kl": None, "ratio_outside": None})
    sink.close()
    found = scalars(tmp_path)
    assert "loss/total" in found and "offpolicy/mismatch_kl" not in found
