"""Engines behind small protocols: reference calculations and molecular dynamics."""
