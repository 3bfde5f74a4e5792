"""pytest plugin for plugin authors: fixtures that build a real engine from a profile."""
