"""Shared wire formats and helpers imported by both the host and the on-device agent.

Standard library, numpy and small dependencies only (tuf is imported lazily by ``trust``/``bundle``).
"""
