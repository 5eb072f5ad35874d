"""The worker in this process, on the tiny model, a real Redis and a real HTTP agent A: it steps,
checkpoints, acknowledges, hot-swaps, serves /metrics, and skips samples that became stale
once agent A serves the newer weights."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import httpx

from gvloop.launcher import free_ports
from services.queue import SampleQueue
from services.schemas import SwapRequest
from services.settings import CommonSettings
from tests.integration.trainer.stub import swap_recorder
from tests.utils.samples import make_sample
from tests.utils.serve import serve_app
from tests.utils.waits import until
from trainer import ckpt
from trainer.settings import TrainerSettings
from trainer.train import Worker


async def test_steps_checkpoints_swaps_and_skips_stale_samples(
    redis_client, stream_name, common: CommonSettings, tmp_path: Path
) -> None:
    calls: list[SwapRequest] = []
    (metrics_port,) = free_ports(1)
    producer = SampleQueue(redis_client, stream_name, common.group)
    with serve_app(swap_recorder(calls)) as agent_a_url:
        cfg = TrainerSettings(
            _env_file=None,  # type: ignore[call-arg]
            batch_size=4,
            micro_batch_size=2,
            max_wait_s=0.5,
            max_staleness=0,
            checkpoint_every=1,
            keep_checkpoints=10,
            lr=1e-3,
            generator_url=agent_a_url,
            metrics_port=metrics_port,
            progress="off",
        )
        worker = Worker(cfg, common)
        await worker.setup()
        loop = asyncio.create_task(worker.main_loop())
        try:
            first = [await producer.put(make_sample(weight_version=0)) for _ in range(4)]
            await until(lambda: worker.served_version == 1)
            # agent A now serves v1: with max_staleness 0, v0 samples are stale
            stale = [await producer.put(make_sample(weight_version=0)) for _ in range(2)]
            fresh = [await producer.put(make_sample(weight_version=1)) for _ in range(4)]
            await until(lambda: worker.served_version == 2)
            async with httpx.AsyncClient() as http:
                exposition = (await http.get(f"http://127.0.0.1:{metrics_port}/metrics")).text
        finally:
            worker.stopping.set()
            await asyncio.wait_for(loop, timeout=60)
            await worker.stop()

    assert [(c.version, Path(c.checkpoint_dir).name) for c in calls] == [
        (1, "step_00000001"),
        (2, "step_00000002"),
    ]
    states = [ckpt.read_state(p) for p in ckpt.list_checkpoints(tmp_path / "checkpoints")]
    # skipped samples are acknowledged at once: no checkpoint needs to commit them
    assert [s.committed_ids for s in states] == [first, fresh]
    assert states[-1].samples_trained == 8 and states[-1].samples_skipped == 2
    assert await redis_client.xlen(stream_name) == 0

    events = [json.loads(line) for line in (tmp_path / "trainer" / "metrics.jsonl").open()]
    steps = [e for e in events if e["event"] == "step"]
    assert [(s["step"], s["samples"], s["version"]) for s in steps] == [(1, 4, 0), (2, 4, 1)]
    assert all(s["loss"] > 0 and s["tokens"] == 12 for s in steps)
    assert [e["id"] for e in events if e["event"] == "skip"] == stale
    assert "gvloop_trainer_step 2.0" in exposition
    assert 'gvloop_trainer_skipped_samples_total{reason="stale"} 2.0' in exposition
