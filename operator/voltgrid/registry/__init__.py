"""The session registry: hot session state kept in memory, off etcd.

Bindings (session -> instance), activity, in-flight counts and usage change on every request;
writing them to the apiserver would turn each call into a Raft round trip. They live here instead:
sharded dicts inside a process (:mod:`.store`), one deadline heap for idle and expiry timers
(:mod:`.scheduler`), and ownership across gateway replicas by rendezvous hashing (:mod:`.ownership`)
so that exactly one replica decides about each session. What a dead replica knew is rebuilt from
the instances themselves (labels written when they were created), never from per-session objects.
"""
