"""Kubelet device plugin that advertises fractional GPUs (fixed-size slices of a card)."""
