"""The run report: one self-contained HTML page with findings, plots, latent cards and sample answers."""

from emkit.report.html import SECTIONS, render, write_report

__all__ = ["SECTIONS", "render", "write_report"]
