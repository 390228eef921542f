"""The config: its schema (fields, types, bounds, descriptions), loading (presets, --config, --set), setup checks."""
