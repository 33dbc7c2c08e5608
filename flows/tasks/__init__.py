"""Keramos."""
