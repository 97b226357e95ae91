"""Pure planning: profiles → desired probe sets; diff(desired, running) → changes."""
