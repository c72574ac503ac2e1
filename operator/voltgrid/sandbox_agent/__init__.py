"""The in-sandbox agent: the code-interpreter API that runs inside every sandbox (SPEC section 3).

It ships in the sandbox images and must stay small and self-contained: the standard library,
aiohttp, jupyter_client and ipykernel only — never kopf, the Kubernetes clients or the rest of
Voltgrid (import-linter enforces it), so an image needs nothing else to serve executions, commands
and files. ``python -m voltgrid.sandbox_agent`` starts it; see docs/sandboxes.md.
"""
