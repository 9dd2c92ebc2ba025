"""Example mrlearn plugin: each module registers one entry with ``mrlearn.registry.register``."""
