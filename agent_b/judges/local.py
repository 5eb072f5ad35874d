"""The judge as a transformers causal LM in this process, on CPU or GPU.

Concurrent questions are coalesced into one left-padded forward pass that computes logits for
the last position only (`logits_to_keep=1`: the 49k-word vocabulary projection is the costly
part for a small model), so many requests cost little more than one.
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING

from agent_b.coalescer import Coalescer, CoalescerFullError
from agent_b.errors import JudgeUnavailableError
from agent_b.judges.base import (
    NO_WORDS,
    YES_WORDS,
    Judge,
    JudgeQuery,
    judge_messages,
)

if TYPE_CHECKING:
    import torch

    from agent_b.metrics import VerifierMetrics
    from agent_b.settings import VerifierSettings

logger = logging.getLogger(__name__)


def word_token_ids(tokenizer, words: tuple[str, ...]) -> list[int]:
    """Ids of the words, bare and after a space, that the tokenizer keeps as one token."""
    ids = {
        encoded[0]
        for word in words
        for variant in (word, f" {word}")
        if len(encoded := tokenizer.encode(variant, add_special_tokens=False)) == 1
    }
    if not ids:
        raise ValueError(f"the judge's tokenizer has no single token for any of {words}")
    return sorted(ids)


class LocalJudge(Judge):
    def __init__(self, settings: VerifierSettings, metrics: VerifierMetrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.name = settings.judge_model or "default"
        self._coalescer: Coalescer[list[int], float] | None = None

    async def load(self) -> None:
        path = self.settings.resolved_judge_model()
        self.name = path
        started = time.perf_counter()
        logger.info("loading judge %s", path)
        await asyncio.to_thread(self._load, path)
        self._coalescer = Coalescer(
            self.forward,
            self.settings.max_batch_size,
            self.settings.max_wait_ms / 1000,
            self.settings.max_queued_prompts,
            on_batch=self.metrics.observe_judge_batch,
        )
        self.ready = True
        logger.info(
            "judge ready: %s on %s (%s), %.1fs",
            path,
            self.device,
            str(self.dtype).removeprefix("torch."),
            time.perf_counter() - started,
        )

    def _load(self, path: str) -> None:
        if path.startswith(("/", ".", "~")) and not Path(path).expanduser().is_dir():
            raise FileNotFoundError(f"no judge model directory at {path}")
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # a bar per load is noise in a service log

        cuda = self.settings.device == "cuda" or (
            self.settings.device == "auto" and torch.cuda.is_available()
        )
        self.device = torch.device("cuda" if cuda else "cpu")
        if self.settings.threads is not None:
            torch.set_num_threads(self.settings.threads)
        dtypes = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
        self.dtype = dtypes.get(self.settings.dtype, torch.bfloat16 if cuda else torch.float32)
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=self.dtype)
        self.model = model.to(self.device).eval()
        self.yes_ids = torch.tensor(word_token_ids(self.tokenizer, YES_WORDS), device=self.device)
        self.no_ids = torch.tensor(word_token_ids(self.tokenizer, NO_WORDS), device=self.device)
        self.pad_id = self.tokenizer.pad_token_id or self.tokenizer.eos_token_id or 0

    def encode(self, query: JudgeQuery) -> list[int]:
        """Token ids of the judge prompt, ending where the judge's Yes or No would come."""
        messages = judge_messages(query, self.settings.max_prompt_tokens)
        if self.tokenizer.chat_template:
            ids = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True)
            ids = ids["input_ids"]
        else:  # a base model: plain text that ends where the answer starts
            text = "\n\n".join(m["content"] for m in messages) + "\nAnswer:"
            ids = self.tokenizer.encode(text)
        # The character budget is approximate; the token bound is not (the question is kept).
        return list(ids[-self.settings.max_prompt_tokens :])

    async def p_yes(self, query: JudgeQuery) -> float:
        assert self._coalescer is not None, "load() first"
        try:
            return await self._coalescer.submit(self.encode(query))
        except CoalescerFullError as exc:
            self.metrics.errors.labels("judge_overloaded").inc()
            raise JudgeUnavailableError(f"the judge is overloaded ({exc}); retry later") from exc

    def forward(self, batch: list[list[int]]) -> list[float]:
        """p(Yes) for each prompt, in one left-padded forward pass."""
        import torch

        width = max(len(ids) for ids in batch)
        # Left padding puts every prompt's last token in the last column.
        input_ids = torch.tensor(
            [[self.pad_id] * (width - len(ids)) + ids for ids in batch], device=self.device
        )  # (B, T)
        mask = torch.tensor(
            [[0] * (width - len(ids)) + [1] * len(ids) for ids in batch], device=self.device
        )
        positions = (mask.cumsum(-1) - 1).clamp(min=0)  # each prompt starts at position 0
        with torch.inference_mode():
            logits = (
                self.model(
                    input_ids=input_ids,
                    attention_mask=mask,
                    position_ids=positions,
                    logits_to_keep=1,
                )
                .logits[:, -1, :]
                .float()
            )  # (B, V)
        return _p_yes(logits, self.yes_ids, self.no_ids).tolist()

    async def aclose(self) -> None:
        if self._coalescer is not None:
            await self._coalescer.aclose()


def _p_yes(logits: torch.Tensor, yes_ids: torch.Tensor, no_ids: torch.Tensor) -> torch.Tensor:
    """p(Yes) / (p(Yes) + p(No)) = sigmoid(logsumexp(yes logits) - logsumexp(no logits))."""
    return (logits[:, yes_ids].logsumexp(-1) - logits[:, no_ids].logsumexp(-1)).sigmoid()
