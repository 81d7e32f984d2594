"""The execution part: `make repro`, and the warm workers or Ray tasks that train cells."""
