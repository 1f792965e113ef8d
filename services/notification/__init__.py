"""The notification service: projects notifications from the stream and delivers them.

``main`` is the composition root (``python -m services.notification.main``); the projection runs
on the shared runner (``projections.runner``) and ``effects`` is what the service does after each
committed batch (log lines, metrics, wake-ups); ``webhooks`` signs and delivers with retries from
Postgres state; ``grpc_api`` serves List/Watch and the preference commands; ``preferences`` turns
those commands into events on the stream.
"""
