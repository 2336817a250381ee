"""Flags, the verdict rule, --fail-on, and the config that drives them."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from llm_audit.config import AuditConfig, Thresholds, VerdictRule, load_config
from llm_audit.errors import ConfigError
from llm_audit.flags import failing, findings, layer_flags, parse_fail_on, verdict, verdict_flags
from llm_audit.vocabulary import (
    COUNTED_FLAGS,
    FINDINGS,
    FLAGS,
    INFORMATIONAL_TRAP_KINDS,
    TRAP_FLAGS,
    TRAP_KINDS,
    trap_flag,
)


def _rec(alpha: float, traps: int = 0, status: str = "success") -> dict:
    r = {"alpha": alpha, "num_traps": traps, "status": status}
    r["flags"] = layer_flags(r, Thresholds())
    return r


def test_layer_flags() -> None:
    assert _rec(1.5)["flags"] == ["alpha_lt_2"]
    assert _rec(3.0)["flags"] == []
    assert _rec(7.0, traps=2)["flags"] == ["alpha_gt_6", "correlation_trap"]
    assert _rec(math.nan, status="fit_failed")["flags"] == ["alpha_fit_failed"]
    assert layer_flags({"status": "too_small"}, Thresholds()) == []
    assert (
        layer_flags({"alpha": 2.5, "num_traps": 1, "status": "success"}, Thresholds(min_traps=2))
        == []
    )


def test_verdict_rule() -> None:
    cfg = AuditConfig()
    healthy = [_rec(3.0) for _ in range(10)]
    assert verdict(healthy, cfg)[0] == "healthy"
    # alpha > 6 (under-trained) is a finding: listed in the reason, not counted...
    name, reason = verdict([*healthy[:9], _rec(7.0)], cfg)
    assert name == "healthy" and reason.endswith("findings, not counted: 1 alpha_gt_6")
    # ... unless the config counts it
    counting = AuditConfig(verdict=VerdictRule(count_alpha_gt_6=True))
    assert verdict([*healthy[:9], _rec(7.0)], counting)[0] == "watch"
    # One trap layer alone (like the real MiniLM's output.dense traps) is "watch"...
    assert verdict([*healthy[:9], _rec(3.0, traps=1)], cfg)[0] == "watch"
    # ... but traps together with alpha < 2 on >= 10% of layers is the anti-grokking signature.
    name, reason = verdict([*healthy[:8], _rec(1.5), _rec(3.0, traps=3)], cfg)
    assert name == "pathological" and "anti-grokking" in reason
    # Traps alone are pathological when widespread (half the layers or more), watch below that
    assert verdict([*healthy[:7], *(_rec(3.0, traps=1) for _ in range(3))], cfg)[0] == "watch"
    assert (
        verdict([*healthy[:5], *(_rec(3.0, traps=1) for _ in range(5))], cfg)[0] == "pathological"
    )
    assert verdict([], cfg)[0] == "watch"


def test_fail_on() -> None:
    assert parse_fail_on("alpha_lt_2, correlation_trap") == ("alpha_lt_2", "correlation_trap")
    assert parse_fail_on(None) == ()
    with pytest.raises(ConfigError, match="unknown flag 'traps'"):
        parse_fail_on("traps")
    records = [_rec(1.5)]
    assert failing(("alpha_lt_2", "correlation_trap"), {"verdict": "watch"}, records) == [
        "alpha_lt_2"
    ]
    assert failing(("pathological",), {"verdict": "watch"}, records) == []
    assert failing(("watch",), {"verdict": "pathological"}, records) == ["watch"]


def test_default_config_is_the_shipped_file() -> None:
    cfg = load_config()
    assert cfg == AuditConfig()  # configs/default.yaml and the dataclass defaults agree
    assert (
        Path("configs/default.yaml").resolve().read_text()
        == Path("llm_audit/_data/default.yaml").read_text()
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("thresholds:\n  alpha_low: -1\n", "0 < alpha_low < alpha_high"),
        ("thresholds:\n  alpha_low: 7\n", "0 < alpha_low < alpha_high"),
        ("estimator: best\n", "estimator 'best' is unknown"),
        ("traps: maybe\n", "traps must be of type bool"),
        ("seed: 1.5\n", "seed must be of type int"),
        ("verdict:\n  pathological_trap_fraction: 2\n", "must lie in [0, 1]"),
        ("bogus: 1\n", "unknown key 'bogus'"),
        ("- a\n- b\n", "must be a YAML mapping"),
        ("a: [\n", "not valid YAML"),
    ],
)
def test_bad_configs(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert message in str(err.value)


def test_partial_config_overrides_defaults(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("thresholds:\n  alpha_high: 8\nseed: 3\n")
    cfg = load_config(path)
    assert cfg.thresholds.alpha_high == 8 and cfg.thresholds.alpha_low == 2 and cfg.seed == 3


def test_findings_and_counted_flags_are_one_partition() -> None:
    """Every flag is counted by the verdict or a finding with its own config key; every trap
    kind but scattered is a finding named as its flag (a new kind is one more name)."""
    assert set(COUNTED_FLAGS) | set(FINDINGS) == set(FLAGS)
    assert not set(COUNTED_FLAGS) & set(FINDINGS)
    rule = VerdictRule()
    for flag, key in FINDINGS.items():
        assert getattr(rule, key) is False and not rule.counts(flag)
        assert VerdictRule(**{key: True}).counts(flag)
    assert set(INFORMATIONAL_TRAP_KINDS) <= set(FINDINGS)
    assert [trap_flag(k) for k in TRAP_KINDS] == list(TRAP_FLAGS)
    assert trap_flag(None) == "correlation_trap"  # traps not placed count as scattered


def test_verdict_flags_and_findings_split_a_layer() -> None:
    r = {**_rec(7.0, traps=2), "trap_kind": "outlier_dimension"}
    r["flags"] = layer_flags(r, Thresholds())
    assert r["flags"] == ["alpha_gt_6", "outlier_dimension"]
    assert verdict_flags(r, VerdictRule()) == [] and findings(r, VerdictRule()) == r["flags"]
    everything = VerdictRule(count_alpha_gt_6=True, count_outlier_dimensions=True)
    assert verdict_flags(r, everything) == r["flags"] and findings(r, everything) == []


def test_count_alpha_gt_6_from_yaml(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("verdict:\n  count_alpha_gt_6: true\n")
    assert load_config(path).verdict.count_alpha_gt_6 is True
    path.write_text("verdict:\n  count_alpha_gt_6: 1\n")
    with pytest.raises(ConfigError, match="count_alpha_gt_6 must be of type bool"):
        load_config(path)
