"""Helpers shared by the test folders: tiny datasets, servers and clusters started for a test."""
