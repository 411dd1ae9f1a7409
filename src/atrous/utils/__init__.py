"""Small shared utilities: distributed helpers, logging, atomic file writes."""
