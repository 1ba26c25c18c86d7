"""tibalance: Textual-Inversion data balancing study."""
