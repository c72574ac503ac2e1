"""Voltgrid's control plane: kopf controllers for Function, Session and Sandbox.

Division of labour with the data plane
--------------------------------------
The gateway is the activator: on a cold start or a wake it creates the session's instance pod
(built by :func:`voltgrid.api.podspec.build_instance_pod`, role ``instance``, labelled with the
session id, named ``<function>-<session-id>`` so a repeated create answers 409) and deletes it when
it releases the session after preStop. Bindings, activity and in-flight counts live only in the
gateway's memory. The operator owns what must exist without traffic: warm pools and
``minInstances``, keep-warm Sessions, Sandboxes, the Function status, and the scale-to-zero safety
net. Owner references (Function -> pods, Sandbox -> pod and NetworkPolicy, keep-warm Session ->
pod) let Kubernetes' garbage collector remove everything: no orphans, even if the operator dies.

Contract on pods (labels are written at creation and never changed)
-------------------------------------------------------------------
- ``voltgrid.dev/managed=true`` on every Voltgrid pod (the operator's watch selects on it).
- ``voltgrid.dev/function``, ``voltgrid.dev/session``, ``voltgrid.dev/role`` = ``instance`` |
  ``warm`` | ``sandbox``; ``voltgrid.dev/sandbox`` on sandbox pods.
- ``voltgrid.dev/idle-timeout`` (annotation): the Function's idleTimeout when the pod was created.
- ``voltgrid.dev/last-active`` (annotation, RFC 3339): the gateway's COARSE activity checkpoint.
  The gateway patches it on a pod at most once every few minutes while the pod serves requests
  (never per request), and once, asynchronously and off the request path, when it claims a warm
  pod. A warm pod with ``last-active`` is *claimed*: it counts as an instance and the operator
  tops the pool up. A warm pod without it is *unclaimed* and may be deleted when the pool shrinks,
  so the gateway must checkpoint a claimed warm pod promptly.
- Safety net: a claimed, non-keep-warm pod whose ``last-active`` (else its creation time) is older
  than its idle timeout plus ``reap_grace`` (default 300 s, longer than the checkpoint interval) is
  deleted by the operator, with an ``InstanceReleased`` Event on the Function. The gateway normally
  releases sooner (after preStop); this catches a gateway that died or lost its state.
- ``voltgrid.dev/keep-warm=true`` (annotation): the pod of a keep-warm Session; never reaped.

Cost model
----------
No kopf timer or daemon per object. A Function without pods costs one reconcile per event and no
memory; status counts are refreshed in batches by ONE sweep for Functions whose pods changed; every
deadline (sandbox expiry, session lifetime, idle pods) sits in ONE heap scheduler.
"""
