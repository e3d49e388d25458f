"""Sections of a tab that stand on their own: one module each, used by the tab that shows them."""
