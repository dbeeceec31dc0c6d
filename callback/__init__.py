"""callback package."""
