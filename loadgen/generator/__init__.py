"""The load generator: scenarios, the open-loop engine, virtual users, measurement and reports."""
