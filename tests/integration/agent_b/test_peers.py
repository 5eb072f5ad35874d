"""The verifier as a reward inside the peers' own code: OpenRLHF's remote reward client, TRL's
GRPOTrainer on the tiny model, verl's custom reward loading and reward manager.

openrlhf and verl are installed without their dependencies (pyproject's `peers` extra: their
full installs want CUDA builds and other transformers versions); what their reward paths import
is in the `test` extra."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from datasets import Dataset
from transformers import TrainerCallback

from agent_b.app import create_app
from agent_b.rewards import reward_function
from agent_b.settings import VerifierSettings
from services.clients import VerifierClient
from services.schemas import VerifyBatchRequest, VerifyRequest
from tests.integration.agent_b.conftest import Server
from tests.utils.serve import serve_app

PROBLEMS = [
    ("What is 17 + 90?", "107"),
    ("What is 6 x 7?", "42"),
    ("What is 82 - 24?", "58"),
]


async def verify_batch(server: Server, items: list[VerifyRequest]) -> list[float]:
    """What /verify/batch answers for the items, as combined scores S."""
    async with VerifierClient(server.url, server.token) as client:
        answer = await client.verify_batch(VerifyBatchRequest(items=items))
    return [v.combined for v in answer.data]


@pytest.fixture(scope="module", autouse=True)
def restore_environment() -> Iterator[None]:
    """verl, TRL and ray write to os.environ when imported (VLLM_LOGGING_LEVEL=ERROR, RAY_*,
    ...), which every process a later test starts would inherit: vLLM would then log no
    pause, which tests of the hot swap watch for."""
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)


@pytest.fixture(scope="module")
def open_verifier(tiny_model_dir: Path) -> Iterator[str]:
    """A verifier without a token: OpenRLHF's client sends no Authorization header."""
    settings = VerifierSettings(judge_model=str(tiny_model_dir), rule_workers=1)
    with serve_app(create_app(settings), ready_path="/health") as url:
        yield url


async def test_openrlhf_remote_reward_client(open_verifier: str) -> None:
    from openrlhf.utils.agent import SingleTurnAgentExecutor

    template = "<|im_start|>user\n{}<|im_end|>\n<|im_start|>assistant\n"
    prompts = [template.format(problem) for problem, _ in PROBLEMS]
    responses = ["17 + 90 = 107. Answer: 107<|im_end|>", "6 x 7 = 43. Answer: 43", "58"]
    labels = [answer for _, answer in PROBLEMS[:2]] + [""]  # the last one: the judge decides
    executor = SingleTurnAgentExecutor(remote_rm_url=f"{open_verifier}/get_reward")
    [got] = await executor._fetch_rewards_via_http(
        [p + r for p, r in zip(prompts, responses, strict=True)], prompts, labels
    )
    want = await verify_batch(
        Server(open_verifier, ""),
        [
            VerifyRequest(problem=p, solution=r, reference_answer=label or None)
            for p, r, label in zip(prompts, responses, labels, strict=True)
        ],
    )
    assert got["rewards"] == pytest.approx(want, abs=1e-5)
    assert got["scores"][:2] == [1.0, 0.0]
    assert got["extra_logs"]["decided_by_rule"] == [1.0, 1.0, 0.0]
    assert got["extra_logs"]["decided_by_model"] == [0.0, 0.0, 1.0]


async def test_openrlhf_reward_func_file_sends_the_token(
    verifier_server: Server, tmp_path: Path
) -> None:
    from openrlhf.utils.agent import SingleTurnAgentExecutor

    # --reward.remote_url naming a Python file: OpenRLHF calls its reward_func, one query a call
    path = tmp_path / "reward_func.py"
    path.write_text(
        "from agent_b.rewards import openrlhf_reward_func\n"
        f"reward_func = openrlhf_reward_func({verifier_server.url!r}, {verifier_server.token!r})\n"
    )
    executor = SingleTurnAgentExecutor(remote_rm_url=str(path))
    prompts = [problem for problem, _ in PROBLEMS]
    responses = [" Answer: 107", " Answer: 41", " Answer: 58"]
    labels = [answer for _, answer in PROBLEMS]
    got = await executor._fetch_rewards_via_func(
        [p + r for p, r in zip(prompts, responses, strict=True)], prompts, labels
    )
    want = await verify_batch(
        verifier_server,
        [
            VerifyRequest(problem=p, solution=r, reference_answer=label)
            for p, r, label in zip(prompts, responses, labels, strict=True)
        ],
    )
    assert [g["rewards"][0] for g in got] == pytest.approx(want, abs=1e-5)
    assert [g["scores"] for g in got] == [[1.0], [0.0], [1.0]]


class KeepGenerations(TrainerCallback):
    """What GRPOTrainer scored at each step: its prompts, completions and logged rewards."""

    def __init__(self) -> None:
        self.trainer = None
        self.steps: list[tuple[list, list, list[float]]] = []

    def on_step_end(self, args, state, control, **kwargs) -> None:
        logs = self.trainer._logs
        rewards = list(logs["rewards"]["gvloop_verifier"])
        self.steps.append((list(logs["prompt"]), list(logs["completion"]), rewards))


async def test_trl_grpo_trainer_takes_steps_on_verifier_rewards(
    verifier_server: Server, tiny_model_dir: Path, tmp_path: Path
) -> None:
    from trl import GRPOConfig, GRPOTrainer

    dataset = Dataset.from_list(
        [{"prompt": [{"role": "user", "content": p}], "answer": a} for p, a in PROBLEMS * 2]
    )
    reward = reward_function(verifier_server.url, verifier_server.token)
    config = GRPOConfig(
        output_dir=str(tmp_path),
        max_steps=2,
        per_device_train_batch_size=4,
        num_generations=4,
        max_completion_length=12,
        learning_rate=1e-4,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        seed=0,
    )
    keep = KeepGenerations()
    trainer = GRPOTrainer(
        model=str(tiny_model_dir),
        reward_funcs=reward,
        args=config,
        train_dataset=dataset,
        callbacks=[keep],
    )
    keep.trainer = trainer
    try:
        trainer.train()
    finally:
        reward.close()
    assert trainer.state.global_step == 2 and len(keep.steps) == 2
    # the judge's view of the steps varies by completion: the comparison below is not trivial
    assert len({r for _, _, rewards in keep.steps for r in rewards}) > 1
    answers = {p: a for p, a in PROBLEMS}
    logged = [e for e in trainer.state.log_history if "rewards/gvloop_verifier/mean" in e]
    for (prompts, completions, rewards), entry in zip(keep.steps, logged, strict=True):
        items = [
            VerifyRequest(
                problem=p[-1]["content"],
                solution=c[-1]["content"],
                reference_answer=answers[p[-1]["content"]],
            )
            for p, c in zip(prompts, completions, strict=True)
        ]
        want = await verify_batch(verifier_server, items)
        assert rewards == pytest.approx(want, abs=1e-5)
        assert entry["rewards/gvloop_verifier/mean"] == pytest.approx(sum(want) / len(want))
        assert "verifier/is_correct" in entry


async def test_verl_loads_compute_score_and_its_reward_manager_scores(
    verifier_server: Server, tiny_model_dir: Path
) -> None:
    import numpy as np
    import torch
    from omegaconf import OmegaConf
    from transformers import AutoTokenizer
    from verl import DataProto
    from verl.experimental.reward_loop.reward_manager.naive import NaiveRewardManager
    from verl.trainer.ppo.reward import get_custom_reward_fn

    # What a verl run's config says: reward.custom_reward_function.{path,name,reward_kwargs}
    config = OmegaConf.create(
        {
            "reward": {
                "custom_reward_function": {
                    "path": "pkg://agent_b.rewards",
                    "name": "compute_score",
                    "reward_kwargs": {"url": verifier_server.url, "token": verifier_server.token},
                }
            }
        }
    )
    compute_score = get_custom_reward_fn(config)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    manager = NaiveRewardManager(config, tokenizer, compute_score)

    problem, answer = PROBLEMS[0]
    response = "17 + 90 = 107. Answer: 107"
    ids = tokenizer(response, add_special_tokens=False, return_tensors="pt")["input_ids"]
    prompt_ids = torch.ones(1, 4, dtype=torch.long)
    data = DataProto.from_dict(
        tensors={
            "prompts": prompt_ids,
            "responses": ids,
            "attention_mask": torch.ones(1, prompt_ids.shape[1] + ids.shape[1], dtype=torch.long),
        },
        non_tensors={
            "data_source": np.array(["gsm8k"], dtype=object),
            "reward_model": np.array([{"ground_truth": answer}], dtype=object),
            "extra_info": np.array([{"question": problem}], dtype=object),
        },
    )
    result = await manager.run_single(data)
    [want] = await verify_batch(
        verifier_server,
        [VerifyRequest(problem=problem, solution=response, reference_answer=answer)],
    )
    assert result["reward_score"] == pytest.approx(want, abs=1e-5)
    info = result["reward_extra_info"]
    assert info["is_correct"] == 1.0 and info["decided_by_both"] == 1.0
    assert set(info) >= {"score", "solution_score", "reasoning_score"}
