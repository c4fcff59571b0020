"""fish-notebook."""
