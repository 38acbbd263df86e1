"""Input specs: scenario and traffic-profile files, validated into frozen dataclasses."""
