"""rtfm-sim."""
