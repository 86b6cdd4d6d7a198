"""tap: the server behind a tap-trading game. Pure core modules live at this level."""
