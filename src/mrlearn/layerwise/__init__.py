"""mrlearn.layerwise."""
