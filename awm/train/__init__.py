"""The training stage: entry point and config, components, the loop, EMA/schedules/state, speed."""
