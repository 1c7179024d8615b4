"""opsctl, the operations toolkit: profiles, planner, bench, tune, reports and launch commands."""
