"""Reliability: faults (worker killed, broker or database down, client retries, bad input)
and what the system guarantees through them; README.md states the policy for answers."""
