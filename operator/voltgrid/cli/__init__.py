"""Command-line entry points: `voltgrid run`, `voltgrid dev`, `voltgrid sessions`, `voltgrid crds`."""
