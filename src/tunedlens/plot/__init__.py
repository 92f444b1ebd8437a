"""Figures (extra ``plot``: plotly for interactive HTML, matplotlib for static PNG)."""
