"""Instance backends: where a Function's instances come from.

The gateway only needs four things from a backend: start an instance for a session id and wait
until it is ready, delete it, list the live ones (with the labels they were created with), and
close. :class:`voltgrid.backends.base.InstanceBackend` is that interface; the Kubernetes backend
(pods, the product) and the local-process backend (``voltgrid dev``, tests, benchmarks) implement it.
"""
