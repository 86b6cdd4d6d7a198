"""The trio shell around the core: clock, supervisor, command line."""
