"""embnas: embedding-size search for recommender systems under a hard memory budget."""
