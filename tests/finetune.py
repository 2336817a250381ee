"""A real fine-tune of the bundled MiniLM on the CPU, for the compare tests and benchmarks.

Contrastive (in-batch InfoNCE) on sentence pairs, as sentence-transformers trains MiniLM: each
sentence of the project's own README paired with itself missing one word. AdamW at a chosen
learning rate: 2e-5 is an ordinary fine-tune, 1e-3 (50x) one that wrecks the embeddings.
"""

from __future__ import annotations

import random
import re
from pathlib import Path

import torch
from safetensors.torch import save_file

from llm_audit.sources import bundled_model_path

README = Path(__file__).parent.parent / "README.md"


def sentence_pairs(seed: int = 0) -> list[tuple[str, str]]:
    text = re.sub(r"`[^`]*`|\[|\]|\([^)]*\)|[#*|>_-]", " ", README.read_text())
    sentences = [s.strip() for s in re.split(r"[.!?:\n]", text) if len(s.split()) >= 6]
    rng = random.Random(seed)
    pairs = []
    for s in sentences:
        words = s.split()
        del words[rng.randrange(len(words))]
        pairs.append((s, " ".join(words)))
    return pairs


def finetune(out: Path, lr: float, steps: int, batch: int = 8, seed: int = 0) -> Path:
    """Fine-tune MiniLM for `steps` AdamW steps at `lr`; write `out/model.safetensors` (with the
    base's config.json) and return the folder."""
    from transformers import AutoModel, AutoTokenizer

    torch.manual_seed(seed)
    base = bundled_model_path()
    tokenizer = AutoTokenizer.from_pretrained(base)
    model = AutoModel.from_pretrained(base)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    pairs = sentence_pairs(seed)
    rng = random.Random(seed)

    def embed(texts: list[str]) -> torch.Tensor:
        enc = tokenizer(texts, padding=True, truncation=True, max_length=24, return_tensors="pt")
        hidden = model(**enc).last_hidden_state
        mask = enc["attention_mask"].unsqueeze(-1).float()
        pooled = (hidden * mask).sum(1) / mask.sum(1)
        return torch.nn.functional.normalize(pooled, dim=-1)

    for _ in range(steps):
        chosen = rng.sample(pairs, batch)
        a, b = embed([p[0] for p in chosen]), embed([p[1] for p in chosen])
        loss = torch.nn.functional.cross_entropy(a @ b.T * 20.0, torch.arange(batch))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(out / "model.safetensors"))
    (out / "config.json").write_text((base / "config.json").read_text())
    return out
