"""Hot swaps that go wrong on the running pipeline: a checkpoint that passes agent A's checks
but breaks inside the engine after half of it is loaded, and the engine killed in the middle of
a swap. No engine serves half-loaded weights (greedy output proves which weights serve), the
error is reported, and the next good swap works. Agent A reaches the engine through a proxy
(`tests.utils.engine_proxy`), so that the engine can be killed at one exact step of a swap.
The tests run in order; the last one kills and restarts the engine."""

from __future__ import annotations

import asyncio
import json
import struct
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from safetensors.torch import load_file, save_file

from agent_a.engine_pool import FLIP_METHOD
from gvloop.tiny_model import make_tiny_model
from services.settings import CommonSettings
from tests.reliability.pipeline.helpers import AUTH, greedy
from tests.utils.engine_proxy import EngineProxy, Fault, engine_proxy
from tests.utils.figures import Figures
from tests.utils.pipeline import LocalStack, common

pytestmark = pytest.mark.slow


@dataclass
class Swaps:
    root: Path
    http: httpx.AsyncClient
    proxy: EngineProxy
    good_text: dict[str, str] = field(default_factory=dict)
    """Greedy answer of each good checkpoint, once served."""

    async def swap(self, checkpoint: Path, version: int, strategy: str = "stage") -> httpx.Response:
        body = {"checkpoint_dir": str(checkpoint), "version": version, "strategy": strategy}
        return await self.http.post("/weights", json=body, headers=AUTH)

    async def served(self) -> int:
        return (await self.http.get("/weights", headers=AUTH)).json()["version"]


@pytest.fixture(scope="module")
async def swaps(pipeline: LocalStack) -> AsyncIterator[Swaps]:
    if pipeline.running("trainer"):  # its own swaps would race these
        pipeline.stop("trainer")
    root = common(pipeline).checkpoint_root
    data_dir = CommonSettings().data_dir  # where the default model's tokenizer is
    for seed in (1, 3, 4):
        make_tiny_model(root / f"rel-good-{seed}", seed=seed, data_dir=data_dir)
    half_loadable(make_tiny_model(root / "rel-half", seed=2, data_dir=data_dir))
    with engine_proxy(pipeline.url("engine")) as (proxy, proxy_url):
        pipeline.stop("generator")
        pipeline.start("generator", env={"GVLOOP_GENERATOR_ENGINE_URLS": json.dumps([proxy_url])})
        async with httpx.AsyncClient(base_url=pipeline.url("generator"), timeout=180) as http:
            swaps = Swaps(root, http, proxy)
            # After any swap the stopped trainer had asked for (one swap at a time): from here
            # on, only these tests change the served weights.
            settled = await swaps.swap(root / "rel-good-4", await swaps.served() + 50)
            assert settled.status_code == 200, settled.text
            yield swaps


def half_loadable(checkpoint: Path) -> None:
    """Split the weights into two shards (with an index) and break the second one's header
    in a way agent A's header check cannot see: a loader gets through the first shard, then
    fails, leaving the engine half on the new weights."""
    tensors = load_file(checkpoint / "model.safetensors")
    (checkpoint / "model.safetensors").unlink()
    names = sorted(tensors)
    second = [n for n in names if n.startswith("model.layers.1.") or n == "model.norm.weight"]
    shards = {
        "model-00001-of-00002.safetensors": [n for n in names if n not in second],
        "model-00002-of-00002.safetensors": second,
    }
    for file, members in shards.items():
        save_file({n: tensors[n] for n in members}, checkpoint / file, metadata={"format": "pt"})
    weight_map = {n: file for file, members in shards.items() for n in members}
    (checkpoint / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))

    broken = checkpoint / "model-00002-of-00002.safetensors"
    raw = broken.read_bytes()
    (length,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + length])
    header[second[0]]["data_offsets"] = [0, 8]  # inside the file, wrong for its shape
    text = json.dumps(header, separators=(",", ":")).encode()
    assert len(text) <= length
    broken.write_bytes(raw[:8] + text.ljust(length) + raw[8 + length :])


@pytest.mark.parametrize(
    ("strategy", "outcome"),
    [
        ("stage", "nothing changed (the engines never paused"),  # it fails before the pause
        ("reload", "every engine recovered"),  # it fails inside the pause: rolled back
    ],
)
async def test_half_loaded_checkpoint_is_rolled_back(
    pipeline: LocalStack, swaps: Swaps, figures: Figures, strategy: str, outcome: str
) -> None:
    version = await swaps.served()
    before = await greedy(swaps.http)

    failed = await swaps.swap(swaps.root / "rel-half", version + 100, strategy)
    after_failure = await greedy(swaps.http)
    served_after_failure = await swaps.served()

    good = await swaps.swap(swaps.root / "rel-good-1", version + 101, strategy)
    swaps.good_text["rel-good-1"], good_version = await greedy(swaps.http)
    figures.report(
        strategy=strategy,
        corrupt_swap_status=failed.status_code,
        served_same_weights_after=after_failure == before,
        next_good_swap_status=good.status_code,
        detail=failed.json()["detail"][:160],
    )
    assert failed.status_code == 502, failed.text
    assert outcome in failed.json()["detail"]
    assert after_failure == before  # the old weights, whole: same greedy text, same version
    assert served_after_failure == version
    assert good.status_code == 200, good.text
    assert good_version == version + 101
    if strategy == "stage":  # the first run: its good swap moves off the base weights
        assert swaps.good_text["rel-good-1"] != before[0]


async def test_engine_killed_mid_swap_then_next_swap_works(
    pipeline: LocalStack, swaps: Swaps, figures: Figures
) -> None:
    version = await swaps.served()
    # The flip waits in the proxy, the engine paused: killed there, it never gets the new
    # weights, the recovery cannot reach it, and agent A must say so.
    flip = swaps.proxy.add(Fault("/collective_rpc", FLIP_METHOD, hold=True))
    swap = asyncio.create_task(swaps.swap(swaps.root / "rel-good-3", version + 1))
    await flip.wait_held()
    async with httpx.AsyncClient(base_url=pipeline.url("engine"), timeout=10) as engine:
        paused_at_kill = (await engine.get("/is_paused")).json()["is_paused"]
    pipeline.kill("engine")
    flip.release()
    killed = await swap
    served_after_kill = await swaps.served()
    generate = await swaps.http.post(
        "/problems", json={"problems": [{"problem": "1 + 1?"}], "n": 1}, headers=AUTH
    )

    started = time.monotonic()
    await asyncio.to_thread(pipeline.start, "engine")  # on its base weights
    restart_s = time.monotonic() - started
    recovered = await swaps.swap(swaps.root / "rel-good-1", version + 2)
    text, served = await greedy(swaps.http)
    figures.report(
        paused_at_kill=paused_at_kill,
        killed_swap_status=killed.status_code,
        generate_while_dead=generate.status_code,
        engine_restart_s=round(restart_s, 1),
        next_good_swap_status=recovered.status_code,
        same_output_as_that_checkpoint=text == swaps.good_text["rel-good-1"],
    )
    assert paused_at_kill is True
    # not "every engine recovered": the one engine was lost, and is out of rotation
    assert killed.status_code == 503, killed.text
    detail = killed.json()["detail"]
    assert "could not recover" in detail and "out of rotation" in detail, detail
    assert served_after_kill == version  # no version claimed for weights nobody serves
    assert generate.status_code == 503 and generate.json()["detail"]
    assert recovered.status_code == 200, recovered.text
    assert (text, served) == (swaps.good_text["rel-good-1"], version + 2)
