"""Plotting only: each module reads results files and writes one figure (PNG + PDF)."""
