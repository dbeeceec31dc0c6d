"""Flow language: YAML files loaded into validated, immutable node graphs."""
