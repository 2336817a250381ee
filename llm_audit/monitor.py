"""The training monitor under the name DESIGN.md gives it; it lives in `llm_audit.calibration`."""

from llm_audit.calibration.monitor import AuditMonitor, trainer_callback

__all__ = ["AuditMonitor", "trainer_callback"]
