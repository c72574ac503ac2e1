"""Admission webhooks: per-session storage mounts (mutating) and isolation policy (validating)."""
