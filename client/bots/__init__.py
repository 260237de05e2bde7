"""Bots shipped with zchat, runnable with ``zchat bot NAME``."""
