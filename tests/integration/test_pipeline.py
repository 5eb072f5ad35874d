"""The whole pipeline as local processes on a tiny model, the way `gvloop up` runs it:
problems in, samples with feedback in Redis, trainer steps, a checkpoint, a hot swap, and the
generator serving (and recording) the new weight version: its greedy output is what
transformers gives on the swapped-in checkpoint. Every sample carries the engine's
log-probabilities of its tokens, and they are transformers' on the weights that sampled them:
the trainer measures itself against the same numbers."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from gvloop.problems import PROBLEM_SETS, load_problems
from services.clients import GeneratorClient
from services.schemas import GenerateRequest, SamplingParams
from tests.integration.agent_a.helpers import (
    GREEDY_TOKENS,
    greedy,
    reference_greedy,
    reference_logprobs,
)
from tests.utils.pipeline import LocalStack, eventually, local_stack, stream_samples

pytestmark = pytest.mark.slow

ENV = {
    "GVLOOP_MAX_BACKLOG": "64",
    "GVLOOP_TRAINER_BATCH_SIZE": "8",
    "GVLOOP_TRAINER_MICRO_BATCH_SIZE": "8",
    # only full batches: the samples of the last requests stay in the stream to be read
    "GVLOOP_TRAINER_MAX_WAIT_S": "250",
    "GVLOOP_TRAINER_CHECKPOINT_EVERY": "1",
    "GVLOOP_TRAINER_LR": "1e-2",  # one step moves the greedy output
    "GVLOOP_TRAINER_PROGRESS": "off",
}
# vLLM's CPU kernels against torch's, both float32, on the tiny model: measured up to ~1e-5 nats
LOGPROB_TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def stack(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    data_dir = tmp_path_factory.mktemp("pipeline")
    # everything but the trainer, so the samples can be read in the stream before it eats them
    with local_stack(tiny_model_dir, data_dir, ENV, ("engine", "verifier", "generator")) as stack:
        yield stack


async def test_problems_in_samples_trained_weights_swapped(
    stack: LocalStack, tiny_model_dir: Path
) -> None:
    problems = load_problems(PROBLEM_SETS["words"].train, limit=8)
    async with GeneratorClient(stack.url("generator"), timeout_s=300) as client:
        assert (await client.weights()).version == 0
        first = await client.generate(
            GenerateRequest(problems=problems, n=2, sampling=SamplingParams(max_tokens=16, seed=0))
        )
        solutions = [s for r in first.data for s in r.solutions]
        assert len(solutions) == 16
        assert all(s.queued and s.weight_version == 0 for s in solutions)

        base = await greedy(client)
        # every sample is in the stream with its feedback and the exact tokens vLLM produced
        samples = {s.sample_id: s for s in await stream_samples(stack)}
        assert samples.keys() == {s.sample_id for s in solutions} | {base.sample_id}
        for sample in samples.values():
            assert sample.completion_token_ids and sample.prompt_token_ids
            assert 0 <= sample.feedback.solution_score <= 1
            assert sample.weight_version == 0
        prompt_ids = samples[base.sample_id].prompt_token_ids
        expected_logprobs = reference_logprobs(tiny_model_dir, list(samples.values()))
        for sample, expected in zip(samples.values(), expected_logprobs, strict=True):
            assert sample.completion_logprobs == pytest.approx(expected, abs=LOGPROB_TOLERANCE)

        # The trainer takes two full batches (the 17th sample waits), checkpoints after each
        # and asks agent A to swap.
        stack.start("trainer")

        async def swapped() -> bool:
            return (await client.weights()).version == 2

        await eventually(swapped, "the second hot swap", stack, timeout_s=300, poll_s=1)
        served = await client.weights()
        after = await client.generate(
            GenerateRequest(problems=problems[:2], sampling=SamplingParams(max_tokens=8))
        )
        assert {s.weight_version for r in after.data for s in r.solutions} == {2}
        retrained = await greedy(client)
        recorded = {s.sample_id: s for s in await stream_samples(stack)}
        versions = [recorded[s.sample_id].weight_version for r in after.data for s in r.solutions]
        assert versions == [2, 2]

    # the served output changed, to what the checkpoint's weights give
    assert served.checkpoint_dir is not None
    expected = reference_greedy(Path(served.checkpoint_dir), prompt_ids, GREEDY_TOKENS)
    assert recorded[retrained.sample_id].completion_token_ids == expected
    assert expected != samples[base.sample_id].completion_token_ids
    (logprobs,) = reference_logprobs(Path(served.checkpoint_dir), [recorded[retrained.sample_id]])
    assert recorded[retrained.sample_id].completion_logprobs == pytest.approx(
        logprobs, abs=LOGPROB_TOLERANCE
    )
    # the first step trained samples of the weights it started from (0 versions behind): the
    # mismatch it measured is the engine's numerics against the trainer's, near nothing
    (step, *_) = stack.events("step")
    assert step["step"] == 1 and step["samples"] == 8
    assert step["mismatch_kl_by_behind"].keys() == {"0"}
    assert 0 <= step["mismatch_kl"] < LOGPROB_TOLERANCE
    checkpoints = sorted((stack.data_dir / "checkpoints").glob("step_*"))
    assert checkpoints and (checkpoints[-1] / "model.safetensors").exists()
    assert "step 1" in stack.log("trainer")
