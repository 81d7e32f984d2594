"""The report part: statistics and tables, Markdown, figures and the test metrics."""
