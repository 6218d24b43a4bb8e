"""Typed models and the error taxonomy. Imports nothing else of bastion."""
