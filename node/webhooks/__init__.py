"""Webhook delivery on a node: each hosted session's events, from its durable event log, to
its workspace's endpoint (or the mesh default), signed, retried, dead-lettered — and the
``WebhookService`` API. Internal to ``node``; see the README's "Webhooks" section.
"""
