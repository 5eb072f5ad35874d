"""The model judge: a yes/no question about a solution, answered with p(Yes).

The logit verifier of "Mind the Gap" (Song et al., ICLR 2025): put the problem, the solution and
a question in the judge's chat template and read the next-token distribution, scoring
p(Yes) / (p(Yes) + p(No)) over the yes/no token variants. One forward pass, no sampling, so the
score is deterministic and cheap. Two backends on the interface of `base.py`: `LocalJudge`
(transformers in this process, `local.py`) and `OpenAIJudge` (an OpenAI-compatible server,
`remote.py`); `setup_judge` picks one by `judge_backend`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from agent_b.judges.base import Judge, JudgeQuery, Question
from agent_b.judges.local import LocalJudge
from agent_b.judges.remote import OpenAIJudge

if TYPE_CHECKING:
    from agent_b.metrics import VerifierMetrics
    from agent_b.settings import VerifierSettings

__all__ = ["Judge", "JudgeQuery", "LocalJudge", "OpenAIJudge", "Question", "setup_judge"]


def setup_judge(settings: VerifierSettings, metrics: VerifierMetrics) -> Judge:
    """The judge backend the settings ask for (not loaded yet)."""
    if settings.judge_backend == "openai":
        return OpenAIJudge(settings)
    return LocalJudge(settings, metrics)
