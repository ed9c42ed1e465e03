"""Publishing finished runs: Hub pushes with dataset cards, local folders, trainer exports, chains."""
