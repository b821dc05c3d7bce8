"""Routing a workspace's calls to the node that serves it: resolution from watch-fed views,
one channel pool, and the redirect/retry decision. Used by the gateway and the proxyless
client; depends on ``registry`` only."""

from routing.channels import ChannelPool, closed_channels_as_errors
from routing.resolver import Resolver
from routing.retry import DEFAULT_RETRY_POLICY, Attempts, NextAttempt, RetryPolicy
from routing.router import Router

__all__ = [
    "DEFAULT_RETRY_POLICY",
    "Attempts",
    "ChannelPool",
    "NextAttempt",
    "Resolver",
    "RetryPolicy",
    "Router",
    "closed_channels_as_errors",
]
