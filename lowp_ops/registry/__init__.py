"""Configs -> named handlers, one entry point (quantize), and torch.ao's workflows as thin wrappers over it.

    configs.py      one frozen config per scheme
    handlers.py     LayerContext, the handler table (register) and the built-in handlers
    plan.py         which layers a call converts, under which config
    graph.py        the model's dataflow: fusions and int8 hand-offs (analyse)
    fusion.py       applying an analysis: BatchNorm folded, relu fused, int8 handed on
    swap.py         the replacement in every slot, tied weights, SwapReport
    api.py          quantize and convert
    calibration.py  calibrate, sync_observers (the ranks' observers made to agree)
    sharded.py      an FSDP2-sharded model gathered into an ordinary one, for convert
    workflows.py    quantize_dynamic (INT8, FP16 or FP8), prepare, prepare_qat, to_fp16
"""

from .api import convert, quantize
from .calibration import calibrate, sync_observers
from .configs import (
           Fp8DynamicConfig,
           Fp16Config,
           Int8Config,
           Int8DynamicConfig,
           Int8StaticConfig,
           LowpConfig,
           QATConfig,
)
from .handlers import LayerContext, register
from .swap import SwapReport
from .workflows import prepare, prepare_qat, quantize_dynamic, to_fp16

__all__ = ["Fp8DynamicConfig", "Fp16Config", "Int8Config", "Int8DynamicConfig", "Int8StaticConfig", "LayerContext",
           "LowpConfig", "QATConfig", "SwapReport", "calibrate", "convert", "prepare", "prepare_qat", "quantize",
           "quantize_dynamic", "register", "sync_observers", "to_fp16"]
