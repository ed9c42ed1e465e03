"""Image inputs shared by the image generators: sources, downloads, normalisation, checks."""
