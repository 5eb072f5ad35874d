"""Batched chat completions with transformers' `generate`, in this process: what `gvloop eval`
answers with for a model directory, and what the naive loop (`bench/naive_loop.py`) samples
and evaluates with, so that both measure a model the same way."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from services.schemas import ChatMessage


@dataclass
class Completion:
    prompt_ids: list[int]
    completion_ids: list[int]  # up to and including the end-of-turn token, when reached
    text: str
    finished: bool  # ended with the end-of-turn token within the budget


def chat_prompt_ids(tok: PreTrainedTokenizerBase, messages: list[ChatMessage]) -> list[int]:
    """The prompt's token ids under the model's chat template, ready for the answer."""
    text = tok.apply_chat_template(
        [m.model_dump() for m in messages], add_generation_prompt=True, tokenize=False
    )
    return tok(text, add_special_tokens=False).input_ids


@torch.no_grad()
def generate(
    model: PreTrainedModel | torch.nn.Module,
    tok: PreTrainedTokenizerBase,
    prompts: list[list[int]],
    n: int,
    temperature: float,
    max_new_tokens: int,
) -> list[list[Completion]]:
    """n completions per prompt (greedy when temperature is 0), left-padded into one batch."""
    model.eval()
    eos, pad = tok.eos_token_id, tok.pad_token_id
    width = max(len(p) for p in prompts)
    input_ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])
    attention_mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    sampling = dict(do_sample=True, temperature=temperature, top_k=0, top_p=1.0)
    out = model.generate(
        input_ids=input_ids.to(model.device),
        attention_mask=attention_mask.to(model.device),
        max_new_tokens=max_new_tokens,
        num_return_sequences=n,
        pad_token_id=pad,
        eos_token_id=eos,
        **(sampling if temperature > 0 else dict(do_sample=False)),
    )  # (len(prompts) * n, width + new)
    results: list[list[Completion]] = []
    for i, prompt in enumerate(prompts):
        group = []
        for row in out[i * n : (i + 1) * n, width:].tolist():
            finished = eos in row
            ids = row[: row.index(eos) + 1] if finished else row
            text = tok.decode(ids, skip_special_tokens=True)
            group.append(Completion(prompt, ids, text, finished))
        results.append(group)
    return results
