"""visual_ivr package."""
