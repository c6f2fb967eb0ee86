"""Plots and reports a physicist would put in a talk: every feature with errors, as PNG and PDF,
and self-contained HTML pages for ``physgen bench`` and ``physgen evaluate``."""

from physgen.report.pages import (
    leaderboard_rows,
    leaderboard_text,
    write_evaluation_report,
    write_json,
    write_report,
)
from physgen.report.plots import HistogramPanel, evaluation_plots, feature_groups, histogram_panel

__all__ = [
    "HistogramPanel",
    "evaluation_plots",
    "feature_groups",
    "histogram_panel",
    "leaderboard_rows",
    "leaderboard_text",
    "write_evaluation_report",
    "write_json",
    "write_report",
]
