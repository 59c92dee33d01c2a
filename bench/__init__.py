"""Tessera's benchmark harness: `python -m bench` (see docs/performance.md).

Starts real node and coordinator processes on loopback with mutual TLS, over
synthetic data generated at the chosen scale, and compares the figures with the
targets of issue 4, with SmartNoise SQL and with OpenDP on numpy. Not imported by
product code; performance is never asserted in a test.
"""
