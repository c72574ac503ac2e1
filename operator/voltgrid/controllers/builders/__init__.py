"""Pure builders of the controllers: objects in, manifests, patches and decisions out.

Nothing here talks to the apiserver or reads a clock: time comes in as ``now``, cluster state as
plain values. That keeps every rule of the control plane table-testable (tests/controllers).
"""
