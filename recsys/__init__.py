"""Recommender data, backbones, metrics and training; knows nothing of the search."""

__all__: list[str] = []
