"""The in-process simulator: one process, one backbone, a virtual clock."""
