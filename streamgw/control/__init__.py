"""The control plane's shared state (``[control]``): managed keys, and the limits, budgets and usage of keys.

It lives in one backend that every worker and instance shares (``Config.control_backend``): an
SQLite file for the workers of one machine, Redis across machines, or memory for one process.
"""
