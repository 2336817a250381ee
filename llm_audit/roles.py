"""The roles a weight matrix can play, what each means, and how it meets the residual stream.

A role says what a matrix does in its block, across architectures, so that per-role summaries and
depth plots compare like with like (every model's `o`, whatever its checkpoint calls it). The
family files in `_data/architectures/` may use these roles and no others. `residual` says whether
the matrix reads the residual stream (its input is the stream: q, k, v, up, gate, router, the
head), writes to it (its output is added to the stream: o, down, the embedding), or neither (it
sits between two other matrices: MLA's up-projections, SSM internals).
"""

from __future__ import annotations

from dataclasses import dataclass

READS, WRITES = "reads", "writes"


@dataclass(frozen=True)
class Role:
    name: str
    meaning: str
    residual: str | None  # READS, WRITES or None


ROLE_TABLE = (
    Role("q", "attention query projection", READS),
    Role("k", "attention key projection", READS),
    Role("v", "attention value projection", READS),
    Role("o", "attention output projection", WRITES),
    Role("qkv", "q, k and v fused in one matrix", READS),
    Role("cross_q", "cross-attention query (decoder of an encoder-decoder)", READS),
    Role("cross_k", "cross-attention key (reads the encoder's output)", READS),
    Role("cross_v", "cross-attention value (reads the encoder's output)", READS),
    Role("cross_o", "cross-attention output projection", WRITES),
    Role("q_a", "MLA: low-rank query down-projection (DeepSeek q_a_proj)", READS),
    Role("q_b", "MLA: query up-projection from the low-rank latent (q_b_proj)", None),
    Role("kv_a", "MLA: joint key-value down-projection (kv_a_proj_with_mqa)", READS),
    Role("kv_b", "MLA: key and value up-projection from the latent (kv_b_proj)", None),
    Role("up", "MLP input projection", READS),
    Role("gate", "MLP gate projection (gated MLPs)", READS),
    Role("down", "MLP output projection", WRITES),
    Role("gate_up", "MLP gate and up fused in one matrix", READS),
    Role("router", "mixture-of-experts router (or shared-expert gate)", READS),
    Role("expert_gate", "one routed expert's gate projection", READS),
    Role("expert_up", "one routed expert's up projection", READS),
    Role("expert_down", "one routed expert's down projection", WRITES),
    Role("expert_gate_up", "one routed expert's gate and up, fused", READS),
    Role("ssm_in", "state-space mixer input projection (Mamba in_proj)", READS),
    Role("ssm_x", "Mamba x_proj: the input-dependent dt, B and C", None),
    Role("ssm_dt", "Mamba dt_proj: the step size per channel", None),
    Role("ssm_conv", "Mamba depthwise convolution kernel (3-D, not analyzed)", None),
    Role("ssm_out", "state-space mixer output projection (Mamba out_proj)", WRITES),
    Role("embed", "token or position embedding (and position-bias tables)", WRITES),
    Role("lm_head", "output head (unembedding)", READS),
    Role("other", "any other 2-D weight (poolers, classifier heads, adapters)", None),
)
ROLES = tuple(role.name for role in ROLE_TABLE)
# config.json keys of the residual stream's width (the hidden size).
HIDDEN_SIZE_KEYS = ("hidden_size", "n_embd", "d_model")
EMBEDDING_ROLES = ("embed", "lm_head")
RESIDUAL = {role.name: role.residual for role in ROLE_TABLE}
