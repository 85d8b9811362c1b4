"""The run report: report.html, self-contained, with inline SVG charts."""

from whetstone.report.page import build_report, write_report

__all__ = ["build_report", "write_report"]
