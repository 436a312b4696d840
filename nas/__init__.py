"""embnas: embedding-size search for recommender systems under a hard memory budget."""

__all__: list[str] = []
