"""Parsl apps, one per stage of an active-learning iteration (thin wrappers around ``cagoflow``)."""
