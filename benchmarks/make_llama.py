"""Write a Llama-shaped checkpoint with random weights, for benchmarks that need a real-size model.

Why: the bundled MiniLM (22M parameters) says little about speed and memory on a 1B model, and
downloading one is not always possible. The layout is the Hub's: `model-0000K-of-0000N.safetensors`
shards of about `shard_gb` each, `model.safetensors.index.json` and a `config.json`, with the
tensor names of `transformers`' LlamaForCausalLM, so llm-audit, WeightWatcher and transformers all
read it as they would a downloaded model.

Each shard's safetensors header is computed from the shapes alone and written first; tensors are
then generated and written one at a time, so at most one tensor (not one shard) is in memory.
Weights are `torch.randn * 0.02` from a generator seeded by (seed, tensor index): the same seed
gives the same weights whatever the shard size. Norm weights are ones, as at initialization.

Usage: python benchmarks/make_llama.py OUT_DIR [--preset 1b|7b|tiny] [--dtype bf16|f32]
       [--blocks N] [--shard-gb 1.0] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import os
import struct
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch


@dataclass(frozen=True)
class LlamaShape:
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int  # fewer than num_attention_heads: grouped-query attention (GQA)
    vocab_size: int


# `1b` is TinyLlama-1.1B's shape: GQA with 4 key/value heads (k_proj and v_proj are 256 x 2048),
# 1.10B parameters: 2.2 GB in bf16, 4.4 GB in f32. `7b` is Llama-2-7B's shape (no GQA): 6.74B
# parameters, 13.5 GB in bf16. `tiny` is for smoke runs (seconds).
PRESETS = {
    "7b": LlamaShape(4096, 11008, 32, 32, 32, 32000),
    "1b": LlamaShape(2048, 5632, 22, 32, 4, 32000),
    "tiny": LlamaShape(256, 688, 2, 8, 4, 4096),
}
DTYPES = {"bf16": (torch.bfloat16, "BF16"), "f32": (torch.float32, "F32")}
INIT_STD = 0.02


def llama_tensors(shape: LlamaShape) -> list[tuple[str, tuple[int, ...]]]:
    """(name, shape) of every tensor of LlamaForCausalLM, in model order (untied lm_head)."""
    h, i = shape.hidden_size, shape.intermediate_size
    kv = shape.num_key_value_heads * (h // shape.num_attention_heads)
    out: list[tuple[str, tuple[int, ...]]] = [("model.embed_tokens.weight", (shape.vocab_size, h))]
    for b in range(shape.num_hidden_layers):
        p = f"model.layers.{b}."
        out += [
            (p + "input_layernorm.weight", (h,)),
            (p + "self_attn.q_proj.weight", (h, h)),
            (p + "self_attn.k_proj.weight", (kv, h)),
            (p + "self_attn.v_proj.weight", (kv, h)),
            (p + "self_attn.o_proj.weight", (h, h)),
            (p + "post_attention_layernorm.weight", (h,)),
            (p + "mlp.gate_proj.weight", (i, h)),
            (p + "mlp.up_proj.weight", (i, h)),
            (p + "mlp.down_proj.weight", (h, i)),
        ]
    out += [("model.norm.weight", (h,)), ("lm_head.weight", (shape.vocab_size, h))]
    return out


def numel(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def plan_shards(
    tensors: list[tuple[str, tuple[int, ...]]], itemsize: int, shard_bytes: int
) -> list[list[tuple[str, tuple[int, ...]]]]:
    """Split tensors, in order, into shards of at most `shard_bytes` (or one tensor, if larger)."""
    shards: list[list[tuple[str, tuple[int, ...]]]] = [[]]
    size = 0
    for name, shape in tensors:
        nbytes = numel(shape) * itemsize
        if shards[-1] and size + nbytes > shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append((name, shape))
        size += nbytes
    return shards


def safetensors_header(
    tensors: list[tuple[str, tuple[int, ...]]], dtype_name: str, itemsize: int
) -> bytes:
    """The 8-byte length and the JSON header (space-padded to 8 bytes) of a safetensors file."""
    entries: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, shape in tensors:
        end = offset + numel(shape) * itemsize
        entries[name] = {"dtype": dtype_name, "shape": list(shape), "data_offsets": [offset, end]}
        offset = end
    raw = json.dumps(entries, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw


def make_tensor(
    name: str, shape: tuple[int, ...], index: int, seed: int, dtype: torch.dtype
) -> torch.Tensor:
    if name.endswith("norm.weight"):
        return torch.ones(shape, dtype=dtype)
    generator = torch.Generator().manual_seed(seed * 1_000_003 + index)
    return (torch.randn(shape, generator=generator) * INIT_STD).to(dtype)


def config_json(shape: LlamaShape, dtype: torch.dtype) -> dict[str, Any]:
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": shape.hidden_size,
        "intermediate_size": shape.intermediate_size,
        "num_hidden_layers": shape.num_hidden_layers,
        "num_attention_heads": shape.num_attention_heads,
        "num_key_value_heads": shape.num_key_value_heads,
        "vocab_size": shape.vocab_size,
        "tie_word_embeddings": False,
        "hidden_act": "silu",
        "max_position_embeddings": 2048,
        "rms_norm_eps": 1e-5,
        "torch_dtype": "bfloat16" if dtype == torch.bfloat16 else "float32",
    }


def write_checkpoint(
    folder: str | Path,
    preset: str = "1b",
    *,
    dtype: str = "bf16",
    blocks: int | None = None,
    shard_gb: float = 1.0,
    seed: int = 0,
) -> dict[str, Any]:
    """Write the checkpoint into `folder` (created); returns a description (files, sizes, shape)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    shape = PRESETS[preset]
    if blocks is not None:
        shape = replace(shape, num_hidden_layers=blocks)
    torch_dtype, dtype_name = DTYPES[dtype]
    itemsize = torch.empty((), dtype=torch_dtype).element_size()
    tensors = llama_tensors(shape)
    shards = plan_shards(tensors, itemsize, int(shard_gb * 1e9))
    weight_map: dict[str, str] = {}
    index = 0
    for k, shard in enumerate(shards, start=1):
        filename = f"model-{k:05d}-of-{len(shards):05d}.safetensors"
        with (folder / filename).open("wb") as fh:
            fh.write(safetensors_header(shard, dtype_name, itemsize))
            for name, tshape in shard:
                t = make_tensor(name, tshape, index, seed, torch_dtype).contiguous()
                fh.write(t.view(torch.uint8).numpy().data)
                weight_map[name] = filename
                index += 1
            fh.flush()
            os.fsync(fh.fileno())  # clean pages: benchmarks can then evict them from the cache
    total_bytes = sum(numel(s) * itemsize for _, s in tensors)
    index_json = {"metadata": {"total_size": total_bytes}, "weight_map": weight_map}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index_json, indent=2) + "\n")
    (folder / "config.json").write_text(
        json.dumps(config_json(shape, torch_dtype), indent=2) + "\n"
    )
    return {
        "folder": str(folder),
        "preset": preset,
        "dtype": dtype,
        "shape": shape.__dict__,
        "num_parameters": sum(numel(s) for _, s in tensors),
        "num_matrices": sum(len(s) == 2 for _, s in tensors),
        "bytes": total_bytes,
        "shards": len(shards),
        "seed": seed,
    }


def write_large_vocabulary(folder: str | Path, *, vocab: int = 128_256, hidden: int = 4096) -> Path:
    """One safetensors file: a Llama-3-shaped bf16 embedding (128256 x 4096, 1.05 GB) and one
    hidden x hidden layer, the case where a vocabulary matrix sets the scan's memory."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = [
        ("model.embed_tokens.weight", (vocab, hidden)),
        ("model.layers.0.self_attn.o_proj.weight", (hidden, hidden)),
    ]
    with (folder / "model.safetensors").open("wb") as fh:
        fh.write(safetensors_header(tensors, "BF16", 2))
        for index, (name, tshape) in enumerate(tensors):
            fh.write(make_tensor(name, tshape, index, 0, torch.bfloat16).view(torch.uint8).numpy())
        fh.flush()
        os.fsync(fh.fileno())
    return folder


def write_gguf_vocabulary(
    path: str | Path, *, vocab: int = 262_144, hidden: int = 640, qtype: str = "Q8_0"
) -> Path:
    """A GGUF file with a Gemma-3-shaped token embedding (262144 x 640) quantized by the `gguf`
    package (it writes Q8_0 and Q4_0, not k-quants) and one hidden x hidden F32 layer."""
    import gguf

    path = Path(path)
    writer = gguf.GGUFWriter(str(path), "gemma3")
    kind = getattr(gguf.GGMLQuantizationType, qtype)
    embedding = make_tensor("token_embd.weight", (vocab, hidden), 0, 0, torch.float32).numpy()
    writer.add_tensor("token_embd.weight", gguf.quants.quantize(embedding, kind), raw_dtype=kind)
    del embedding
    square = make_tensor("blk.0.attn_output.weight", (hidden, hidden), 1, 0, torch.float32)
    writer.add_tensor("blk.0.attn_output.weight", square.numpy())
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("out", type=Path, help="folder to write (created)")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="1b")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
    parser.add_argument("--blocks", type=int, help="override the number of transformer blocks")
    parser.add_argument("--shard-gb", type=float, default=1.0, help="shard size (GB, 1e9 bytes)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    start = time.perf_counter()
    info = write_checkpoint(
        args.out,
        args.preset,
        dtype=args.dtype,
        blocks=args.blocks,
        shard_gb=args.shard_gb,
        seed=args.seed,
    )
    print(
        f"wrote {info['folder']}: {info['num_parameters'] / 1e9:.3f}B parameters, "
        f"{info['num_matrices']} matrices, {info['bytes'] / 1e9:.2f} GB {info['dtype']} "
        f"in {info['shards']} shards, {time.perf_counter() - start:.1f} s"
    )


if __name__ == "__main__":
    main()
