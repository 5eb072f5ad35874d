"""Hot swaps against a real vLLM CPU engine: weights change under requests in flight, none
fails, greedy output becomes what the new weights give, and the version served and recorded
follows; a failed reload recovers the last good weights; a failed stage changes nothing; the
tied LM head follows the embeddings; bad checkpoints never reach the engine.
The tests run in order: each starts from the weights the previous one left."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import httpx
import pytest
import redis.asyncio as aioredis
import torch
from safetensors.torch import load_file, save_file

from agent_a.errors import DependencyFailedError
from services.clients import ServiceError
from services.schemas import (
    GenerateRequest,
    ProblemIn,
    SamplingParams,
    SwapRequest,
    SwapStrategy,
)
from tests.integration.agent_a.conftest import Backends, RunningGenerator
from tests.integration.agent_a.helpers import (
    GREEDY_TOKENS,
    greedy,
    reference_greedy,
    stream_samples,
    wait_engine_running,
)

pytestmark = pytest.mark.slow

IN_FLIGHT = 3
# Seconds each on 2 cores: still generating when the swap lands. min_tokens too, because a
# random model's sampled end of sequence depends on the CPU's arithmetic, and CI's differs.
LONG_TOKENS = 1500  # the tiny engine's context is 2048


def swaps_total(generator: RunningGenerator) -> float:
    registry = generator.app.state.metrics.registry
    return sum(
        registry.get_sample_value("gvloop_generator_swaps_total", {"outcome": o}) or 0.0
        for o in ("ok", "failed", "abandoned")
    )


async def test_swap_under_load_changes_output_and_version(
    generator: RunningGenerator, backends: Backends, redis_client: aioredis.Redis
) -> None:
    stream = generator.common.stream
    async with generator.client() as client:
        assert (await client.weights()).version == 0
        before = await greedy(client)
        sample = (await stream_samples(redis_client, stream))[before.sample_id]
        prompt_ids = sample.prompt_token_ids
        assert sample.completion_token_ids == reference_greedy(
            backends.base_dir, prompt_ids, GREEDY_TOKENS
        )

        long_requests = [
            GenerateRequest(
                problems=[ProblemIn(problem=f"Tell a long story, number {i}.")],
                sampling=SamplingParams(
                    temperature=0.8, max_tokens=LONG_TOKENS, min_tokens=LONG_TOKENS, seed=i
                ),
            )
            for i in range(IN_FLIGHT)
        ]
        in_flight = [asyncio.create_task(client.generate(r)) for r in long_requests]
        try:
            # How many run at once depends on the machine's speed; one generating is enough
            await wait_engine_running(backends.engine_url, 1, in_flight)
            checkpoint = backends.checkpoint_root / "step_1"
            swap = await client.swap(SwapRequest(checkpoint_dir=str(checkpoint), version=1))
            spanning = sum(not t.done() for t in in_flight)
            finished = await asyncio.gather(*in_flight)  # raises if any request failed
        finally:
            for task in in_flight:
                task.cancel()
        assert spanning, "the requests ended before the swap"

        assert (swap.version, swap.engines, swap.strategy) == (1, 1, "stage")
        t = swap.timings
        assert 0 < t.stage_s < t.total_s and 0 < t.pause_s and 0 < t.reload_s < t.stopped_s
        # the pause waits for the step in flight, then generation stops: one after the other
        assert t.stage_s + t.pause_s + t.stopped_s < t.total_s
        assert t.versions_differ_s == 0  # one engine never disagrees with itself
        results = [s for r in finished for result in r.data for s in result.solutions]
        assert len(results) == IN_FLIGHT and all(s.queued for s in results)
        # One that spanned the swap got tokens from both versions: the one it started on is
        # recorded (0); one that reached the engine after the swap records 1.
        versions = {s.weight_version for s in results}
        assert 0 in versions and versions <= {0, 1}

        after = await greedy(client)
        assert after.weight_version == 1
        new_ids = (await stream_samples(redis_client, stream))[after.sample_id]
        assert new_ids.prompt_token_ids == prompt_ids
        expected = reference_greedy(checkpoint, prompt_ids, GREEDY_TOKENS)
        assert new_ids.completion_token_ids == expected
        assert expected != sample.completion_token_ids

        served = await client.weights()
        assert (served.version, served.checkpoint_dir) == (1, str(checkpoint.resolve()))
    gauge = generator.app.state.metrics.registry.get_sample_value("gvloop_generator_weight_version")
    assert gauge == 1
    async with httpx.AsyncClient(base_url=backends.engine_url, timeout=10) as engine:
        assert (await engine.get("/weight_info")).json() == {"weight_version": "1"}
    recorded = {s.weight_version for s in (await stream_samples(redis_client, stream)).values()}
    assert recorded == {0, 1}


async def test_failed_reload_recovers_last_good_weights(
    generator: RunningGenerator, backends: Backends
) -> None:
    async with generator.client() as client:
        before = await greedy(client)
        assert before.weight_version == 1
        # Passed every check, then vanished before the engine read it (a retention sweep, say):
        # the engine fails mid-swap, with every engine paused.
        vanished = backends.checkpoint_root / "vanished"
        with pytest.raises(DependencyFailedError, match="every engine recovered v1"):
            await generator.service.swapper.swap(vanished, 2, strategy="reload")

        assert (await client.weights()).version == 1
        after = await greedy(client)  # the engine resumed, on the last good weights
        assert (after.solution, after.weight_version) == (before.solution, 1)
        health = await generator.service.health()
        assert health.status == "ok" and health.engines[0].healthy

        # And the next swap goes through: back to the base weights, as version 2.
        swap = await client.swap(
            SwapRequest(checkpoint_dir=str(backends.checkpoint_root / "base"), version=2)
        )
        assert swap.version == 2
        assert (await greedy(client)).weight_version == 2


async def test_failed_stage_leaves_the_engine_serving_the_old_version(
    generator: RunningGenerator, backends: Backends
) -> None:
    swaps = swaps_total(generator)
    async with generator.client() as client:
        before = await greedy(client)
        assert before.weight_version == 2
        # Passed every check, then vanished before the engines staged it
        vanished = backends.checkpoint_root / "vanished"
        with pytest.raises(DependencyFailedError, match=r"nothing changed.*never paused"):
            await generator.service.swapper.swap(vanished, 3)

        async with httpx.AsyncClient(base_url=backends.engine_url, timeout=10) as engine:
            assert (await engine.get("/is_paused")).json() == {"is_paused": False}
            assert (await engine.get("/weight_info")).json() == {"weight_version": "2"}
        assert (await client.weights()).version == 2
        after = await greedy(client)
        assert (after.solution, after.weight_version) == (before.solution, 2)
    assert swaps_total(generator) == swaps + 1  # counted, as abandoned
    health = await generator.service.health()
    assert health.status == "ok" and health.engines[0].healthy


async def test_a_stage_short_of_memory_reloads_in_the_pause(
    generator: RunningGenerator, backends: Backends, monkeypatch: pytest.MonkeyPatch
) -> None:
    # As on a host without room for a second copy of the weights: the engine measures its own
    # memory against what the generator asks it to keep free.
    monkeypatch.setattr(generator.service.pool.settings, "stage_headroom_gib", 2.0**20)
    async with generator.client() as client:
        version = (await client.weights()).version + 1
        checkpoint = backends.checkpoint_root / "step_1"
        swap = await client.swap(SwapRequest(checkpoint_dir=str(checkpoint), version=version))
        assert swap.strategy == "reload" and swap.version == version
        assert swap.timings.reload_s > 0
        assert (await greedy(client)).weight_version == version
    async with httpx.AsyncClient(base_url=backends.engine_url, timeout=10) as engine:
        assert (await engine.get("/is_paused")).json() == {"is_paused": False}


def embeddings_of(source: Path, donor: Path, target: Path) -> Path:
    """`source` with the token embeddings of `donor` (tied: the LM head too), nothing else."""
    shutil.copytree(source, target)
    tensors = load_file(target / "model.safetensors")
    name = "model.embed_tokens.weight"
    tensors[name] = load_file(donor / "model.safetensors")[name]
    save_file(tensors, target / "model.safetensors", metadata={"format": "pt"})
    return target


@pytest.mark.parametrize("strategy", ["stage", "reload"])
async def test_tied_lm_head_follows_the_embeddings(
    generator: RunningGenerator,
    backends: Backends,
    redis_client: aioredis.Redis,
    strategy: SwapStrategy,
) -> None:
    # Only the embedding changes: an LM head still computing with the old one (the CPU
    # backend's packed copy of it) gives other tokens than transformers, which ties them.
    root = backends.checkpoint_root
    checkpoint = embeddings_of(root / "base", root / "step_1", root / f"embeddings_{strategy}")
    async with generator.client() as client:
        version = (await client.weights()).version + 1
        await client.swap(
            SwapRequest(checkpoint_dir=str(checkpoint), version=version, strategy=strategy)
        )
        after = await greedy(client)
    assert after.weight_version == version
    sample = (await stream_samples(redis_client, generator.common.stream))[after.sample_id]
    expected = reference_greedy(checkpoint, sample.prompt_token_ids, GREEDY_TOKENS)
    assert sample.completion_token_ids == expected


def reshaped_copy(source: Path, target: Path) -> Path:
    """A copy whose one tensor has the wrong shape (vLLM would load it without complaint)."""
    shutil.copytree(source, target)
    tensors = load_file(target / "model.safetensors")
    name = "model.layers.1.mlp.down_proj.weight"
    tensors[name] = torch.zeros(tensors[name].shape[0], tensors[name].shape[1] * 2)
    save_file(tensors, target / "model.safetensors", metadata={"format": "pt"})
    return target


def truncated_copy(source: Path, target: Path) -> Path:
    """A copy cut short, as a crashed writer without temp-then-rename would leave it."""
    shutil.copytree(source, target)
    weights = target / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    return target


async def test_bad_checkpoints_are_refused_before_any_engine_pauses(
    generator: RunningGenerator, backends: Backends
) -> None:
    root = backends.checkpoint_root
    step_1 = root / "step_1"
    (root / "escape").symlink_to(backends.base_dir, target_is_directory=True)
    no_config = root / "no_config"
    no_config.mkdir()
    shutil.copy(step_1 / "model.safetensors", no_config)
    cases = [
        # outside the root, named directly
        (str(backends.base_dir), 403, "outside the checkpoint root"),
        # outside the root through ..
        ("../elsewhere", 403, "outside the checkpoint root"),
        # outside the root through a symlink that lies inside it
        (str(root / "escape"), 403, "outside the checkpoint root"),
        (str(root / "missing"), 422, "no directory"),
        (str(no_config), 422, "no config.json"),
        (str(reshaped_copy(step_1, root / "reshaped")), 422, "wrong shapes"),
        (str(truncated_copy(step_1, root / "truncated")), 422, "not a complete safetensors"),
    ]
    swaps = swaps_total(generator)
    async with generator.client() as client:
        version = (await client.weights()).version
        for path, status, message in cases:
            with pytest.raises(ServiceError) as caught:
                await client.swap(SwapRequest(checkpoint_dir=path, version=99))
            assert caught.value.status_code == status, (path, caught.value.detail)
            assert message in caught.value.detail, path
        assert (await client.weights()).version == version
    assert swaps_total(generator) == swaps  # no swap even started
