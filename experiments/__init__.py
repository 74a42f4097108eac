"""Runnable experiments: one script per paper section; each step writes one file."""
