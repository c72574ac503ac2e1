"""The trigger dispatcher: cron ticks and queue messages delivered to Functions through the gateway.

Every event becomes one HTTP POST in CloudEvents binary mode to ``/fn/<namespace>/<function>/<path>``
on the gateway, carrying the session key the Function's affinity reads, so events get the same
affinity, cold-start queue, limits and metering as requests. A message is acknowledged to its broker
only after the gateway answered 2xx (at least once); failures are retried with exponential backoff
and end in a dead-letter destination. This package never imports kopf or the gateway: it is a client
of the gateway over HTTP, like any other.
"""
