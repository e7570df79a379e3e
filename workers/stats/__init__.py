"""Pure statistics (numpy/scipy only; no Django, no torch)."""
