"""Code that runs inside vLLM's worker processes, mixed into the worker class with
`--worker-extension-cls agent_a.vllm_worker.WeightReloadExtension`: the weight reload agent A
calls through /collective_rpc. Only the engine imports this module (it needs vLLM).

# NOTE: vLLM 0.32's in-place reload (`reload_weights`) re-processes only the layers whose
# weights the checkpoint carries. With tied embeddings (SmolLM2, our tiny test models) the LM
# head carries none: its weight shares storage with the reloaded embedding, but on the CPU
# backend its GEMM runs on a copy packed at load time (`dispatch_cpu_unquantized_gemm`), so
# after a plain reload the model computes logits with the OLD embedding: new body, old head,
# no error. Re-processing the unquantized vocabulary layers packs the new weights (on CUDA it
# does nothing).
"""

from __future__ import annotations

from typing import Any

from vllm.config import set_current_vllm_config
from vllm.model_executor.layers.vocab_parallel_embedding import (
    UnquantizedEmbeddingMethod,
    VocabParallelEmbedding,
)


class WeightReloadExtension:
    model_runner: Any
    vllm_config: Any

    def gvloop_extension_ready(self) -> bool:
        """Lets agent A check at start-up that swaps can work on this engine."""
        return True

    def gvloop_reload_weights(self, weights_path: str) -> None:
        """Reload an HF checkpoint directory in place, tied layers included."""
        with set_current_vllm_config(self.vllm_config):
            self.model_runner.reload_weights(weights_path=weights_path, is_checkpoint_format=True)
            for module in self.model_runner.get_model().modules():
                if isinstance(module, VocabParallelEmbedding) and isinstance(
                    module.quant_method, UnquantizedEmbeddingMethod
                ):
                    module.quant_method.process_weights_after_loading(module)
