"""Email templates of the tasks, shipped as package data."""
