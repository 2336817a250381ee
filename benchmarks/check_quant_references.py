"""Check GPTQ and AWQ decoding against AutoGPTQ's and AutoAWQ's own code, by hand, once.

Why by hand: neither package can be a test dependency (AutoGPTQ 0.7.1 and AutoAWQ 0.2.9 ship CUDA
builds and pull triton; GPTQModel needs another torch), but their pure-torch reference code can be
loaded from the downloaded files without installing them:

    pip download --no-deps auto-gptq==0.7.1 autoawq==0.2.9 -d DIR
    unzip -q DIR/auto_gptq-0.7.1-*.whl -d DIR/ag && tar xzf DIR/autoawq-0.2.9.tar.gz -C DIR
    python benchmarks/check_quant_references.py DIR

For 2, 3, 4 and 8 bits, with and without act-order, it checks that AutoGPTQ's `QuantLinear.pack`
(qlinear_cuda) writes the same qweight and qzeros as tests/quant_writers.py and that its torch
forward pass on the identity equals llm-audit's dequantized Wᵀ; then that AutoAWQ's
`dequantize_gemm` equals llm-audit's AWQ decoding rounded to float16 (AutoAWQ computes in float16).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root: tests/

from llm_audit.quant import find_quantized
from llm_audit.quant.base import unpack_last
from llm_audit.sources.base import SourceInfo
from llm_audit.sources.memory import StateDictSource
from tests import quant_writers as qw


def load(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def decoded(tensors: dict[str, torch.Tensor], config: dict[str, object]) -> torch.Tensor:
    source = StateDictSource(tensors, SourceInfo("check", "state-dict"))
    (q,) = find_quantized(source.tensors(), {"quantization_config": config}).weights.values()
    return q.rows(source, 0, q.shape[0])


def check_gptq(folder: Path) -> bool:
    qlinear = load(folder / "ag/auto_gptq/nn_modules/qlinear/qlinear_cuda.py")
    W = torch.randn(96, 256, generator=torch.Generator().manual_seed(0))
    ok = True
    for bits in (2, 3, 4, 8):
        for act_order in (False, True):
            parts, dequantized = qw.gptq(W, bits, 64, act_order=act_order)
            zeros = (unpack_last(parts["qzeros"], bits) + 1) & (2**bits - 1)
            linear = torch.nn.Linear(256, 96, bias=False)
            linear.weight.data = dequantized.clone()
            layer = qlinear.QuantLinear(bits, 64, 256, 96, bias=False, weight_dtype=torch.float32)
            layer.pack(linear, parts["scales"].float().T, zeros.float().T, parts["g_idx"])
            packed = torch.equal(layer.qweight, parts["qweight"]) and torch.equal(
                layer.qzeros, parts["qzeros"]
            )
            tensors = {"l.qweight": layer.qweight, "l.qzeros": layer.qzeros,
                       "l.scales": layer.scales.half(), "l.g_idx": layer.g_idx}  # fmt: skip
            with torch.no_grad():
                forward = layer.eval()(torch.eye(256))  # Wᵀ as AutoGPTQ dequantizes it
            ours = decoded(tensors, {"quant_method": "gptq", "bits": bits})
            same = torch.equal(forward, ours)
            print(
                f"GPTQ {bits}-bit act_order={act_order}: pack equal {packed}, decode equal {same}"
            )
            ok = ok and packed and same
    return ok


def check_awq(folder: Path) -> bool:
    packing = load(folder / "autoawq-0.2.9/awq/utils/packing_utils.py")
    W = torch.randn(96, 256, generator=torch.Generator().manual_seed(0))
    parts, _ = qw.awq(W, 64)
    reference = packing.dequantize_gemm(parts["qweight"], parts["qzeros"], parts["scales"], 4, 64)
    config = {"quant_method": "awq", "bits": 4, "group_size": 64}
    ours = decoded({f"l.{k}": v for k, v in parts.items()}, config)
    same = torch.equal(reference, ours.half())
    print(f"AWQ 4-bit: dequantize_gemm equal to ours in float16 {same}")
    return same


def main() -> None:
    folder = Path(sys.argv[1])
    ok = check_gptq(folder) & check_awq(folder)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
