"""Stateless functional primitives shared by every family. Nothing here knows about any family."""
