"""The whole pipeline as local processes on a tiny model, the way `gvloop up` runs it:
problems in, samples with feedback in Redis, trainer steps, a checkpoint, a hot swap, and the
generator serving (and recording) the new weight version."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from gvloop.problems import PROBLEM_SETS, load_problems
from services.clients import GeneratorClient
from services.schemas import GenerateRequest, SamplingParams
from tests.utils.pipeline import LocalStack, eventually, local_stack, stream_samples

pytestmark = pytest.mark.slow

ENV = {
    "GVLOOP_MAX_BACKLOG": "64",
    "GVLOOP_TRAINER_BATCH_SIZE": "8",
    "GVLOOP_TRAINER_MICRO_BATCH_SIZE": "8",
    "GVLOOP_TRAINER_MAX_WAIT_S": "5",
    "GVLOOP_TRAINER_CHECKPOINT_EVERY": "1",
    "GVLOOP_TRAINER_PROGRESS": "off",
}


@pytest.fixture(scope="module")
def stack(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    data_dir = tmp_path_factory.mktemp("pipeline")
    # everything but the trainer, so the samples can be read in the stream before it eats them
    with local_stack(tiny_model_dir, data_dir, ENV, ("engine", "verifier", "generator")) as stack:
        yield stack


async def test_problems_in_samples_trained_weights_swapped(stack: LocalStack) -> None:
    problems = load_problems(PROBLEM_SETS["words"].train, limit=8)
    async with GeneratorClient(stack.url("generator"), timeout_s=300) as client:
        assert (await client.weights()).version == 0
        first = await client.generate(
            GenerateRequest(problems=problems, n=2, sampling=SamplingParams(max_tokens=16, seed=0))
        )
        solutions = [s for r in first.data for s in r.solutions]
        assert len(solutions) == 16
        assert all(s.queued and s.weight_version == 0 for s in solutions)

        # every sample is in the stream with its feedback and the exact tokens vLLM produced
        samples = await stream_samples(stack)
        assert {s.sample_id for s in samples} == {s.sample_id for s in solutions}
        for sample in samples:
            assert sample.completion_token_ids and sample.prompt_token_ids
            assert 0 <= sample.feedback.solution_score <= 1
            assert sample.weight_version == 0

        # The trainer consumes the samples, checkpoints, and asks agent A to swap.
        stack.start("trainer")

        async def swapped() -> bool:
            return (await client.weights()).version >= 1

        await eventually(swapped, "a hot swap", stack, timeout_s=300, poll_s=1)
        version = (await client.weights()).version
        after = await client.generate(
            GenerateRequest(problems=problems[:2], sampling=SamplingParams(max_tokens=8))
        )
        assert {s.weight_version for r in after.data for s in r.solutions} == {version}
        recorded = {s.sample_id: s.weight_version for s in await stream_samples(stack)}
        assert [recorded[s.sample_id] for r in after.data for s in r.solutions] == [version] * 2

    (step, *_) = stack.events("step")
    assert step["step"] == 1 and step["samples"] == 8
    checkpoints = sorted((stack.data_dir / "checkpoints").glob("step_*"))
    assert checkpoints and (checkpoints[-1] / "model.safetensors").exists()
    assert "step 1" in stack.log("trainer")
