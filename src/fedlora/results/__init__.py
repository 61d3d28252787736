"""Run results: the event log, metrics, summary, adapter folder, plots, and run comparison."""
