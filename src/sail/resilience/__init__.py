"""Resilience: what happens between choosing a route and returning a response.

The sans-I/O core shared by the httpx transports and the gRPC channels: the response
classifier, retries with backoff and budgets, deadlines, circuit breakers, outlier
detection and fault injection. Nothing here does I/O or takes a lock; the transports drive
it (send, sleep, read the clock) and feed it what happened.
"""
