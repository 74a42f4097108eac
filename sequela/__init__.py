"""Backdoor sequela (paper Section 6): membership inference and backdoor re-injection."""
