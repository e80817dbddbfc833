"""Helpers shared by several test folders (imported, not pytest fixtures)."""
