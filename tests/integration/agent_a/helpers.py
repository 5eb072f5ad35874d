"""What the agent A integration tests share: reading the samples back from the stream, greedy
generations through the API, and the reference greedy continuation from transformers."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Sequence
from pathlib import Path

import httpx
import redis.asyncio as aioredis
import torch
from transformers import AutoModelForCausalLM

from services.clients import GeneratorClient
from services.queue import PAYLOAD
from services.schemas import GeneratedSolution, GenerateRequest, ProblemIn, Sample, SamplingParams
from tests.utils.samples import make_sample

GREEDY_TOKENS = 8
PROMPT = "What is 12 + 30? Answer with the number."


async def stream_samples(client: aioredis.Redis, stream: str) -> dict[str, Sample]:
    """Every sample in the stream, by sample id."""
    entries = await client.xrange(stream)
    samples = (Sample.model_validate_json(fields[PAYLOAD.encode()]) for _, fields in entries)
    return {s.sample_id: s for s in samples}


async def fill_queue(client: aioredis.Redis, stream: str, bound: int) -> list[bytes]:
    """Append filler samples until the stream holds `bound`; returns their ids."""
    missing = bound - await client.xlen(stream)
    payload = make_sample().model_dump_json()
    async with client.pipeline(transaction=False) as pipe:
        for _ in range(missing):
            pipe.xadd(stream, {PAYLOAD: payload})
        return await pipe.execute()


async def greedy(client: GeneratorClient, problem: str = PROMPT) -> GeneratedSolution:
    request = GenerateRequest(
        problems=[ProblemIn(problem=problem, reference_answer="42")],
        sampling=SamplingParams(temperature=0.0, max_tokens=GREEDY_TOKENS),
    )
    (result,) = (await client.generate(request)).data
    (solution,) = result.solutions
    return solution


def reference_greedy(model_dir: Path, prompt_ids: list[int], max_new_tokens: int) -> list[int]:
    """transformers' greedy continuation: what these weights give, independently of vLLM."""
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    with torch.no_grad():
        out = model.generate(
            torch.tensor([prompt_ids]),
            attention_mask=torch.ones(1, len(prompt_ids), dtype=torch.long),
            max_new_tokens=max_new_tokens,
            do_sample=False,
        )
    return out[0, len(prompt_ids) :].tolist()


def reference_logprobs(model_dir: Path, samples: Sequence[Sample]) -> list[list[float]]:
    """log p of each sample's completion tokens under these weights, by transformers
    (float32): what the engine should have reported as it sampled them."""
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    found = []
    for sample in samples:
        prompt, completion = sample.prompt_token_ids, sample.completion_token_ids
        with torch.no_grad():
            logits = model(torch.tensor([prompt + completion])).logits[0, len(prompt) - 1 : -1]
        log_p = torch.log_softmax(logits, dim=-1).gather(1, torch.tensor(completion)[:, None])
        found.append(log_p.squeeze(1).tolist())
    return found


async def wait_engine_running(
    engine_url: str,
    count: int,
    requests: Sequence[asyncio.Task[object]] = (),
    timeout_s: float = 120,
) -> None:
    """Until vLLM reports `count` requests running (its Prometheus gauge); fails at once, with
    its outcome, if one of the `requests` that should be running failed, or all of them ended
    (one may end between two reads of the gauge: the others still run)."""
    gauge = re.compile(r"^vllm:num_requests_running\{[^}]*\} ([0-9.]+)$", re.MULTILINE)
    running = 0.0
    async with httpx.AsyncClient(base_url=engine_url, timeout=10) as http:
        for _ in range(int(timeout_s * 10)):
            running = sum(float(v) for v in gauge.findall((await http.get("/metrics")).text))
            if running >= count:
                return
            ended = [t for t in requests if t.done()]
            if failed := [t.exception() for t in ended if t.exception() is not None]:
                raise AssertionError(f"a request failed before {count} were running: {failed[0]!r}")
            if ended and len(ended) == len(requests):
                outcome = ended[0].result()
                raise AssertionError(f"the requests ended before {count} were running: {outcome!r}")
            await asyncio.sleep(0.1)
    raise AssertionError(f"the engine never had {count} requests running (last seen: {running})")
