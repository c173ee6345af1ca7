"""The Nexus recommender service: counts words (the template every service starts from)."""
