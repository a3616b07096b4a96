"""The launch shared by the tiled kernels (the GEMM and the implicit-GEMM conv), and the `wrap` hook of every launcher.

A tiled kernel takes BLOCK_M / BLOCK_N / BLOCK_K / GROUP_M tiles and an EVEN_K constexpr, set when BLOCK_K divides
its reduction length (then the reduction loop loads without masks). It launches one of two ways:
    autotuned        the autotuner picks the tile (kernels/tuning.py: configs and pruner) and a heuristic EVEN_K;
    a given config   the bare @triton.jit kernel with that tile and EVEN_K computed here, the only way to pass a
                     fixed tile through torch.library.wrap_triton (which takes jit and autotune objects, not
                     heuristics). CPU tensors (TRITON_INTERPRET=1) always launch this way, with INTERPRETER_CONFIG.
"""

from dataclasses import dataclass

import torch
import triton
from torch._subclasses.fake_tensor import is_fake

# Interpreter (CPU) runs skip autotuning: one modest tile, small enough that odd test shapes exercise the
# masked tails in M, N and K.
INTERPRETER_CONFIG = {"BLOCK_M": 16, "BLOCK_N": 32, "BLOCK_K": 32, "GROUP_M": 4, "num_warps": 4, "num_stages": 1}

# The epilogue's OUTPUT constexpr (kernels/epilogue.py) for each output dtype.
_OUTPUT_KIND = {torch.int32: "int32", torch.int8: "int8",
                torch.float16: "float", torch.bfloat16: "float", torch.float32: "float"}


def output_kind(dtype: torch.dtype) -> str:
    """The epilogue's OUTPUT constexpr for an output dtype: "int32" (raw), "int8" (requantized) or "float"."""
    return _OUTPUT_KIND[dtype]


def fake(t: torch.Tensor) -> bool:
    """Whether t is a fake tensor (torch.compile traces the launch: no address, nothing to cache). Plain tensors
    answer by their type: is_fake itself takes ~1.3 us a call (CI machine)."""
    return type(t) is not torch.Tensor and is_fake(t)


def direct(kernel):
    """The default `wrap` of every launcher: launch the kernel as it is. lowp_ops.ops passes
    torch.library.wrap_triton instead, so that torch.compile traces into the kernel."""
    return kernel


@dataclass(frozen=True)
class TiledKernel:
    """kernel: a @triton.jit kernel taking BLOCK_M, BLOCK_N, BLOCK_K, GROUP_M and EVEN_K constexprs.
    reduction: the name of its argument holding the reduction length that BLOCK_K tiles."""

    kernel: triton.JITFunction
    reduction: str

    def even_k(self, args: dict) -> bool:
        """The EVEN_K heuristic: the reduction needs no mask when the BLOCK_K tiles cover it exactly."""
        return args[self.reduction] % args["BLOCK_K"] == 0

    def autotuned(self, configs: list, *, key: list, prune, restore_value: tuple[str, ...] = ()):
        """The kernel autotuned over configs (pruned by prune, a Triton early_config_prune), EVEN_K by heuristic.
        restore_value: the tensor arguments the kernel writes in place and reads (an accumulator): the autotuner
        runs every surviving config on the real arguments (triton 3.6 even a single one), so it must put them back
        after each trial run, or the result holds the sum of every trial."""
        return triton.autotune(configs=configs, key=key, prune_configs_by={"early_config_prune": prune},
                               restore_value=list(restore_value))(
            triton.heuristics({"EVEN_K": self.even_k})(self.kernel))

    def launch(self, tuned, grid, args: dict, *, device: torch.device, config=None, wrap=direct) -> None:
        """Launch with `tuned` (one of self.autotuned's results), or with config when one is given (BLOCK_M,
        BLOCK_N, BLOCK_K, GROUP_M, num_warps, num_stages) or the tensors are on the CPU."""
        if config is None and device.type == "cpu":
            config = INTERPRETER_CONFIG
        if config is not None and config["BLOCK_K"] < 32 and args["a_ptr"].element_size() == 1 and \
                not args.get("DEPTHWISE", False):
            # refused here, not only by the GPU compiler: the interpreter would run it, and a test with it pass
            raise ValueError(f"BLOCK_K must be >= 32 for 8-bit operands (NVIDIA's 8-bit dot takes K >= 32), got "
                             f"{config['BLOCK_K']}")
        if config is None:
            wrap(tuned)[grid](**args)
        else:
            wrap(self.kernel)[grid](**args, **config, EVEN_K=self.even_k({**args, **config}))
