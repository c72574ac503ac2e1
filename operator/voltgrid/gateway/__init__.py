"""The Voltgrid gateway: every invocation and the Session API go through it.

An aiohttp application built as a chain of small middlewares (errors, limits, tracing, routing to
a function, auth, session affinity, one-hop forwarding to the owning replica) in front of a
streaming proxy. Entry points: :func:`voltgrid.gateway.app.build_app` and
:func:`voltgrid.gateway.app.run_gateway`.
"""
