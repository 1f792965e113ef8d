"""The notification service: projects notifications from the stream and delivers them.

``main`` is the composition root (``python -m services.notification.main``); ``runner`` drives the
projector (durable consumers, one transaction per batch, ack after commit); ``webhooks`` signs and
delivers with retries from Postgres state; ``grpc_api`` serves List/Watch and the preference
commands; ``preferences`` turns those commands into events on the stream.
"""
